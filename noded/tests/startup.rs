//! Startup through the real binary: config layering and validation, metadata.json, data dir
//! ownership, health.

use std::process::Command;
use std::time::Duration;

use cyxcloud_testkit::{Proc, free_port, tempdir};

use crate::support::*;

/// Runs the binary to completion (it must not hang) and returns (exit code, output).
pub fn run_to_exit(cmd: Command, dir: &std::path::Path, name: &str) -> (i32, String) {
    let log = dir.join(format!("{name}.log"));
    let mut p = Proc::spawn(name, cmd, &log);
    let st = p.wait_exit(Duration::from_secs(20));
    (st.code().unwrap_or(-1), p.log())
}

fn base_cmd(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud-node"));
    cmd.current_dir(data.parent().unwrap())
        .env("STORAGE_PATH", data)
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", free_port().to_string())
        .env("METRICS_PORT", free_port().to_string())
        .env("LIBP2P_PORT", free_port().to_string())
        .env("CENTRAL_REGISTER", "false")
        .env("CYXWIZ_API_REGISTER", "false")
        .env_remove("NODE_ID")
        .env_remove("CYXWIZ_EMAIL")
        .env_remove("CYXWIZ_PASSWORD");
    cmd
}

#[test]
fn invalid_configuration_is_refused_before_any_port_is_bound() {
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("data");
    // A bad environment value names the variable.
    let mut cmd = base_cmd(&data);
    cmd.env("GRPC_PORT", "abc");
    let (code, out) = run_to_exit(cmd, tmp.path(), "bad-env");
    assert_ne!(code, 0);
    assert!(out.contains("environment variable GRPC_PORT"), "{out}");
    assert!(!out.contains("listening"), "{out}");
    // A bad file value names the key; an unknown key is refused, not ignored.
    let cfg = tmp.path().join("node.toml");
    std::fs::write(&cfg, "[storage]\nmax_capacity_gb = -5\n").unwrap();
    let mut cmd = base_cmd(&data);
    cmd.arg("--config").arg(&cfg);
    let (code, out) = run_to_exit(cmd, tmp.path(), "bad-file");
    assert_ne!(code, 0);
    assert!(out.contains("storage.max_capacity_gb"), "{out}");
    assert!(!out.contains("listening"), "{out}");
    std::fs::write(&cfg, "[network]\ngrpc_prot = 1\n").unwrap();
    let mut cmd = base_cmd(&data);
    cmd.arg("--config").arg(&cfg);
    let (code, out) = run_to_exit(cmd, tmp.path(), "typo");
    assert_ne!(code, 0);
    assert!(out.contains("network.grpc_prot"), "{out}");
    // Both forms of the join token in one place.
    std::fs::write(
        &cfg,
        "[central]\njoin_token = \"0123456789abcdef0123\"\njoin_token_file = \"/etc/x\"\n",
    )
    .unwrap();
    let mut cmd = base_cmd(&data);
    cmd.arg("--config")
        .arg(&cfg)
        .env_remove("NODE_JOIN_TOKEN")
        .env_remove("NODE_JOIN_TOKEN_FILE");
    let (code, out) = run_to_exit(cmd, tmp.path(), "both-tokens");
    assert_ne!(code, 0);
    assert!(out.contains("not both"), "{out}");
    // Same port twice.
    let mut cmd = base_cmd(&data);
    cmd.env("GRPC_PORT", "7777").env("METRICS_PORT", "7777");
    let (code, out) = run_to_exit(cmd, tmp.path(), "ports");
    assert_ne!(code, 0);
    assert!(out.contains("port 7777"), "{out}");
    assert!(
        !data.join("metadata.json").exists(),
        "nothing written for an invalid config"
    );
}

#[test]
fn config_file_env_and_flags_layer_and_metadata_is_written() {
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("flagged-data");
    let grpc = free_port();
    let metrics = free_port();
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = \"file-node\"\nname = \"my-mining-rig\"\nregion = \"us-east\"\n\
             [storage]\ndata_dir = \"{}\"\nmax_capacity_gb = 2\n\
             [network]\nbind_address = \"127.0.0.1\"\ngrpc_port = 1\np2p_port = {}\n\
             [central]\nregister = false\ntoken_public_keys = [\"{}\"]\n\
             join_token_file = \"/etc/cyxcloud/join-token\"\n\
             [cyxwiz_api]\nregister = false\n[metrics]\nport = {metrics}\n",
            tmp.path().join("file-data").display(),
            free_port(),
            signer_hex(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(cyxcloud_testkit::bin("cyxcloud-node"));
    // ./config.toml is picked up without --config; env beats the file; --data-dir beats both.
    cmd.current_dir(tmp.path())
        .env("GRPC_PORT", grpc.to_string())
        .env("NODE_DATACENTER", "dc1")
        .env("NODE_RACK", "r7")
        // Replaces the file's join_token_file (as a container's environment does).
        .env("NODE_JOIN_TOKEN", "a-join-token-from-the-environment")
        .env_remove("NODE_JOIN_TOKEN_FILE")
        .env("STORAGE_PATH", tmp.path().join("env-data"))
        .env_remove("NODE_ID")
        .env_remove("METRICS_PORT")
        .env_remove("CENTRAL_REGISTER")
        .env_remove("CYXWIZ_API_REGISTER")
        .arg("--data-dir")
        .arg(&data);
    let mut p = Proc::spawn("layered", cmd, &tmp.path().join("layered.log"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics));
    let health: serde_json::Value = serde_json::from_str(&cyxcloud_testkit::wait_for_http(
        addr,
        "/health",
        START_TIMEOUT,
    ))
    .unwrap();
    assert_eq!(health["node_id"], "file-node");
    assert_eq!(health["state"], "running");
    assert_eq!(health["capacity_bytes"], 2u64 << 30);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(meta["node_id"], "file-node");
    assert_eq!(meta["name"], "my-mining-rig");
    assert_eq!(meta["backend"], "rocksdb");
    assert_eq!(meta["grpc_address"], format!("http://127.0.0.1:{grpc}"));
    assert!(meta["peer_id"].as_str().unwrap().starts_with("12D3Koo"));
    assert!(data.join("rocksdb").join("CURRENT").exists());
    assert!(!tmp.path().join("env-data").exists());
    assert!(!tmp.path().join("file-data").exists());
    let log = p.log();
    assert!(
        log.contains("\"region\":\"us-east\""),
        "effective config logged: {log}"
    );
    assert!(log.contains("\"datacenter\":\"dc1\""));
    assert!(log.contains("\"rack\":\"r7\""));
    assert!(
        log.contains("\"join_token\":\"<redacted>\"") && log.contains("\"join_token_file\":\"\""),
        "the environment's join token replaces the file's token file: {log}"
    );
    p.term();
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn a_data_dir_of_another_node_is_refused_and_a_generated_id_is_kept() {
    let mut node = Node::start(Spec::default());
    let generated = node.id.clone();
    assert!(generated.starts_with("node-"), "{generated}");
    node.restart();
    assert_eq!(
        node.id, generated,
        "the generated id is kept in metadata.json"
    );
    node.stop();
    let mut cmd = node.command();
    cmd.env("NODE_ID", "intruder");
    let (code, out) = run_to_exit(cmd, node.data_root(), "intruder");
    assert_ne!(code, 0);
    assert!(out.contains("belongs to node"), "{out}");
    assert!(out.contains(&generated), "{out}");
    assert!(!out.contains("listening"), "{out}");
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let node = Node::start(Spec::id("only-one"));
    let mut cmd = node.command();
    cmd.env("GRPC_PORT", free_port().to_string())
        .env("METRICS_PORT", free_port().to_string())
        .env("LIBP2P_PORT", free_port().to_string());
    let (code, out) = run_to_exit(cmd, node.data_root(), "second");
    assert_ne!(code, 0);
    assert!(out.contains("another node is running"), "{out}");
}
