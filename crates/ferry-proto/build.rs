fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../../proto/ferry/v1/ferry.proto");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["../../proto/ferry/v1/ferry.proto"], &["../../proto"])?;
    Ok(())
}
