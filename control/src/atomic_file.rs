//! Files that a crash cannot leave half written: a killed process or a node that loses power
//! finds the old content or the new one, never a part of it (which would make the next start
//! fail on a file it cannot parse, again and again).
//!
//! The content goes to a temporary file beside the target (`.<name>.tmp`), created afresh with
//! its final mode (so a private file is never readable by others, not even for a moment),
//! fsync'ed, renamed over the target; then the folder is fsync'ed so the rename is durable too.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The temporary file [`write`] uses for `path`.
pub fn temporary_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    Ok(path.with_file_name(tmp_name))
}

/// Replaces `path` with `bytes` (file mode `mode`, less the umask) atomically and durably.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temporary_path(path)?;
    // A stale temporary file (a crash mid-write) may have another mode: start afresh.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Best effort: some filesystems refuse to sync a folder.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_content_with_the_mode_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("fb-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        write(&file, b"one", 0o644).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"one");
        assert_eq!(mode(&file), 0o644);
        // A temporary file left by a crash mid-write is not reused.
        let tmp = temporary_path(&file).unwrap();
        assert_eq!(tmp, dir.join(".state.json.tmp"));
        std::fs::write(&tmp, "half").unwrap();
        write(&file, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(mode(&file), 0o600);
        assert!(!tmp.exists());
        assert!(write(Path::new("/"), b"x", 0o600).is_err(), "no file name");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
