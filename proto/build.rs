//! Generates the tonic/prost code. protoc comes from `protoc-bin-vendored` so no system package
//! is needed; a `PROTOC` set in the environment wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => p.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let files: Vec<String> = ["common", "chunk", "registry", "control", "maintenance"]
        .iter()
        .map(|f| format!("proto/cyxcloud/v1/{f}.proto"))
        .collect();
    tonic_prost_build::configure()
        .bytes(".cyxcloud.v1.PutShardRequest.data")
        .bytes(".cyxcloud.v1.GetShardResponse.data")
        .compile_with_config(config, &files, &["proto".to_string()])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
