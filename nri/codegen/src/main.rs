//! Regenerates the NRI ttrpc stubs: `cargo run --manifest-path nri/codegen/Cargo.toml`.
//!
//! Paths are relative to the `nri/` crate folder, found from this manifest's location.

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let nri = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen lives in nri/codegen")
        .to_path_buf();
    let out = nri.join("src/api");
    Codegen::new()
        .out_dir(&out)
        .input(nri.join("proto/api.proto"))
        .include(nri.join("proto"))
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the NRI stubs failed");
    println!("generated {}", out.display());
}
