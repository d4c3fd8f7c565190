//! Locating the workspace binaries (`fleetboard`, ...) from an integration test.

use std::path::PathBuf;

/// Path of a binary built by this workspace, e.g. `bin("fleetboard")`.
///
/// Integration tests live in `target/<profile>/deps/`; the binaries of the same build are one
/// folder up. `FLEETBOARD_BIN_DIR` overrides the folder. Panics with the fix when it is missing,
/// since a test without its binary cannot say anything useful.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FLEETBOARD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test binary has a parent folder");
            deps.parent()
                .expect("deps has a parent folder")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found: build it first (`cargo build --workspace --bins`) or set FLEETBOARD_BIN_DIR",
        path.display()
    );
    path
}
