//! Compiles `schemas/proto` with protox (no system `protoc` needed) and generates the tonic
//! code from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/proto");
    let cluster = root.join("runnel/cluster/v1/cluster.proto");
    println!("cargo:rerun-if-changed={}", cluster.display());
    let descriptors = protox::compile([&cluster], [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
