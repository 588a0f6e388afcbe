//! Operator login against a real HTTP account API, the credentials file, and the machine key
//! on registration.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::startup::run_to_exit;
use crate::support::account_api::{AccountApi, EMAIL, PASSWORD};
use crate::support::gateway::FakeGateway;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_logs_in_registers_the_machine_and_later_starts_reuse_it() {
    let api = AccountApi::start().await;
    let gw = FakeGateway::start().await;
    gw.state().require_api_key = Some("api-key-1".into());
    let spec = Spec::id("login-node")
        .gateway(gw.addr)
        .env("CYXWIZ_API_REGISTER", "true")
        .env("CYXWIZ_API_URL", api.url())
        .env("STORAGE_CAPACITY_GB", "5");
    let mut node = Node::start(
        spec.clone()
            .env("CYXWIZ_EMAIL", EMAIL)
            .env("CYXWIZ_PASSWORD", PASSWORD),
    );
    let path = node.dir.join(".cyxwiz_credentials.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(creds["owner_id"], "user-1");
    assert_eq!(creds["machine_id"], "machine-1");
    assert_eq!(creds["api_key"], "api-key-1");
    assert_eq!(creds["email"], EMAIL);
    assert_eq!(creds["user_name"], "John Doe");
    assert_eq!(creds["api_url"], api.url());
    assert!(creds["created_at"].as_str().unwrap().ends_with('Z'));
    {
        let st = api.state.lock().unwrap();
        assert_eq!(st.logins.len(), 1);
        assert_eq!(st.logins[0]["password"], PASSWORD);
        let (body, auth) = &st.registrations[0];
        assert_eq!(auth.as_deref(), Some("Bearer jwt-test-123"));
        assert_eq!(body["node_id"], "login-node");
        assert_eq!(body["storage_capacity_bytes"], 5u64 << 30);
        assert!(body["cpu_cores"].as_u64().unwrap() >= 1);
        assert!(body["ram_bytes"].as_u64().unwrap() > 0);
    }
    assert!(node.log().contains("Login successful"));
    assert!(node.log().contains("Welcome, John Doe!"));
    // The gateway accepted the machine key.
    let (reg, auth) = eventually(Duration::from_secs(20), "registration", || {
        gw.state().registrations.first().cloned()
    })
    .await;
    assert_eq!(auth.as_deref(), Some("Bearer api-key-1"));
    assert_eq!(reg.machine_id, "machine-1");

    // Later starts reuse the file: no login, no prompt.
    node.kill();
    node.spec = spec.clone();
    node.launch();
    node.wait_ready();
    assert!(
        node.log()
            .contains("Loaded existing credentials - machine already registered")
    );
    assert_eq!(api.state.lock().unwrap().logins.len(), 1);
    node.kill();

    // Deleting the file forces a new login; without a terminal or credentials that is a clear
    // error and a non-zero exit, never a hang.
    std::fs::remove_file(&path).unwrap();
    let (code, out) = run_to_exit(node.command(), node.data_root(), "no-tty");
    assert_ne!(code, 0);
    assert!(out.contains("no terminal to prompt on"), "{out}");
    assert!(out.contains("CYXWIZ_EMAIL"), "{out}");
    assert!(!path.exists());
    // A wrong password is refused with the API's message.
    let mut cmd = node.command();
    cmd.env("CYXWIZ_EMAIL", EMAIL)
        .env("CYXWIZ_PASSWORD", "wrong");
    let (code, out) = run_to_exit(cmd, node.data_root(), "wrong-password");
    assert_ne!(code, 0);
    assert!(out.contains("invalid email or password"), "{out}");
    assert!(!path.exists());
    // --email and --password-file work too.
    let pw = node.data_root().join("password.txt");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    node.spec.args = vec![
        "--email".into(),
        EMAIL.into(),
        "--password-file".into(),
        pw.display().to_string(),
    ];
    node.launch();
    node.wait_ready();
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(creds["machine_id"], "machine-2");
    assert_eq!(api.state.lock().unwrap().logins.len(), 3);
}
