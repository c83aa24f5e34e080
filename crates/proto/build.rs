//! Generates the tonic/prost code for `proto/rewarddance/v1/reward.proto` with the vendored
//! `protoc` (no system protobuf compiler needed), plus a file descriptor set for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    // Read at run time (not `env!`): a build-script binary may be reused across checkouts.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("rewarddance/v1/reward.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not tonic-prost's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(out.join("rewarddance_descriptor.bin"))
        .compile_protos(&[file], &[root])?;
    Ok(())
}
