//! Generates the client code of the `runnel.v1` API from `schemas/proto` (with protox, so no
//! system `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a build script compiled for a
    // checkout elsewhere may be reused from a shared target directory.
    let root =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../schemas/proto");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("runnel/v1").display()
    );
    let files: Vec<_> = ["records", "producer", "consumer", "admin", "functions"]
        .iter()
        .map(|name| root.join(format!("runnel/v1/{name}.proto")))
        .collect();
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile(&files, [&root])?)?;
    Ok(())
}
