//! Compiles `schemas/proto` with protox (no system `protoc` needed) and generates the tonic
//! code from it: the internal cluster RPC and the public `runnel.v1` API, whose descriptor
//! set is also kept for gRPC server reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a build script compiled for a
    // checkout elsewhere may be reused from a shared target directory.
    let root =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../schemas/proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let cluster = root.join("runnel/cluster/v1/cluster.proto");
    tonic_prost_build::configure().compile_fds(protox::compile([&cluster], [&root])?)?;

    let api: Vec<_> = ["records", "producer", "consumer", "admin", "functions"]
        .iter()
        .map(|name| root.join(format!("runnel/v1/{name}.proto")))
        .collect();
    let descriptors = protox::compile(&api, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("runnel_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
