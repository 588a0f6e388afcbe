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

/// The node under `script`, which gives it a pseudo-terminal as stdin, like an operator's
/// shell. Killed (node first, then script) on drop.
struct OnTerminal {
    script: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    stdin: std::process::ChildStdin,
}

impl OnTerminal {
    fn spawn(node: &Node) -> OnTerminal {
        use std::io::Read;
        let inner = node.command();
        let mut line = String::from("exec");
        for part in std::iter::once(inner.get_program()).chain(inner.get_args()) {
            line.push_str(" '");
            line.push_str(&part.to_string_lossy().replace('\'', "'\\''"));
            line.push('\'');
        }
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-q", "-e", "-f", "-c", &line, "/dev/null"]);
        if let Some(d) = inner.get_current_dir() {
            cmd.current_dir(d);
        }
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut script = cmd.spawn().expect("spawn script (util-linux)");
        let stdin = script.stdin.take().unwrap();
        let mut stdout = script.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        OnTerminal { script, out, stdin }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn wait_for(&self, text: &str) {
        wait(
            Duration::from_secs(20),
            &format!("{text:?} on the terminal"),
            || self.output().contains(text).then_some(()),
        );
    }

    fn type_line(&mut self, s: &str) {
        use std::io::Write;
        self.stdin.write_all(format!("{s}\n").as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Pids of the script's children (the node).
    fn node_pids(&self) -> Vec<String> {
        let pid = self.script.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        for pid in self.node_pids() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_on_a_terminal_with_a_hidden_password() {
    let api = AccountApi::start().await;
    let node = Node::new(
        Spec::id("tty-node")
            .env("CYXWIZ_API_REGISTER", "true")
            .env("CYXWIZ_API_URL", api.url()),
    );
    let mut term = OnTerminal::spawn(&node);
    term.wait_for("CyxWiz Storage Node - Login Required");
    term.wait_for("Email: ");
    term.type_line(EMAIL);
    term.wait_for("Password: ");
    // A wrong password first: refused, asked again.
    term.type_line("not it");
    term.wait_for("invalid email or password");
    // Both are asked again.
    wait(Duration::from_secs(20), "the second email prompt", || {
        (term.output().matches("Email: ").count() >= 2).then_some(())
    });
    term.type_line(EMAIL);
    wait(
        Duration::from_secs(20),
        "the second password prompt",
        || (term.output().matches("Password: ").count() >= 2).then_some(()),
    );
    term.type_line(PASSWORD);
    term.wait_for("Machine registered successfully");
    cyxcloud_testkit::wait_for_http(node.metrics, "/health", START_TIMEOUT);
    let out = term.output();
    assert!(out.contains("Welcome, John Doe!"), "{out}");
    assert!(
        !out.contains(PASSWORD),
        "the password is never echoed:\n{out}"
    );
    assert!(
        !out.contains("not it"),
        "the password is never echoed:\n{out}"
    );
    let creds = node.dir.join(".cyxwiz_credentials.json");
    assert!(creds.exists());
    assert_eq!(api.state.lock().unwrap().logins.len(), 2);
}
