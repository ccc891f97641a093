//! Compiles the .proto files with protox (pure Rust: no protoc binary needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["meshgate/v1/mesh.proto", "etcd/rpc.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // `bytes` fields as `Bytes`: a resource serialized once is shared by every push.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".meshgate.v1.Resource.json")
        .compile_fds(fds)?;
    Ok(())
}
