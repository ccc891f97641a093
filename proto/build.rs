//! Compiles the .proto files with protox (pure Rust: no protoc binary needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["meshgate/v1/mesh.proto", "etcd/rpc.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
