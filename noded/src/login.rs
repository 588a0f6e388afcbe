//! Operator login and machine registration against the account API (served by the gateway's
//! HTTP port under `/api`), and the credentials file `{data_dir}/.cyxwiz_credentials.json`.
//!
//! Where the machine's API key comes from, first match wins:
//! 1. `[cyxwiz_api] api_key` (with `owner_id`, `machine_id`) in the config;
//! 2. the credentials file of an earlier login ("Loaded existing credentials");
//! 3. a new login, when `[cyxwiz_api] register = true`:
//!    * non-interactive: `CYXWIZ_EMAIL` + `CYXWIZ_PASSWORD`, or `--email` + `--password-file`
//!      (or `CYXWIZ_PASSWORD_FILE`); for automation;
//!    * interactive: when stdin is a terminal, prompt for the email and a hidden password;
//!    * otherwise: a clear error and a non-zero exit, never a hang on a prompt nobody sees.
//!
//! Login is `POST /api/auth/login`, registration `POST /api/machines/register` with the JWT;
//! the file is written with mode 0600. Deleting it forces a new login on the next start.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};

pub const FILE: &str = ".cyxwiz_credentials.json";
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Login inputs from flags (the environment is read by [`ensure`]).
#[derive(Debug, Clone, Default)]
pub struct LoginInput {
    pub email: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The saved credentials (field names are the file format).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub owner_id: String,
    pub machine_id: String,
    pub api_key: String,
    pub email: String,
    pub user_name: String,
    pub api_url: String,
    pub created_at: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("owner_id", &self.owner_id)
            .field("machine_id", &self.machine_id)
            .field("api_key", &"<redacted>")
            .field("email", &self.email)
            .finish()
    }
}

/// Writes `bytes` to `path` with mode 0600 (temp file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("cannot chmod", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename into", path, e))
}

impl Credentials {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Reads saved credentials; a file readable by others is tightened to 0600.
    pub fn load(data_dir: &Path) -> Result<Option<Credentials>> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        let bad = |reason: String| Error::BadCredentials {
            path: path.clone(),
            reason,
        };
        let c: Credentials = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if c.api_key.is_empty() || c.machine_id.is_empty() {
            return Err(bad(
                "api_key or machine_id is empty; delete the file to log in again".into(),
            ));
        }
        let mode = std::fs::metadata(&path)
            .map_err(|e| Error::io("cannot stat", &path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "credentials file was readable by others; setting mode 0600");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("cannot chmod", &path, e))?;
        }
        Ok(Some(c))
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(self).expect("credentials serialize");
        write_private(&Self::path(data_dir), &body)
    }
}

/// Returns the machine credentials to present to the gateway, logging in when needed.
pub async fn ensure(
    cfg: &Config,
    data_dir: &Path,
    node_id: &str,
    input: &LoginInput,
) -> Result<Option<Credentials>> {
    let api = &cfg.cyxwiz_api;
    if !api.api_key.is_empty() {
        tracing::info!("using the machine API key from the configuration");
        return Ok(Some(Credentials {
            owner_id: api.owner_id.clone(),
            machine_id: api.machine_id.clone(),
            api_key: api.api_key.clone(),
            email: String::new(),
            user_name: String::new(),
            api_url: api.base_url.clone(),
            created_at: String::new(),
        }));
    }
    if let Some(c) = Credentials::load(data_dir)? {
        tracing::info!(machine_id = %c.machine_id, "Loaded existing credentials - machine already registered");
        return Ok(Some(c));
    }
    if !api.register {
        return Ok(None);
    }
    let (email, password, interactive) = obtain_login(input)?;
    let base = api.base_url.trim_end_matches('/').to_string();
    let (email, user) = if interactive {
        interactive_login(&base, email, password).await?
    } else {
        let user = login(&base, &email, &password).await?;
        (email, user)
    };
    say(&format!(
        "\n✓ Login successful!\n  Welcome, {}!\n\nRegistering machine...",
        user.name
    ));
    let reg = register_machine(&base, &user.token, cfg, node_id).await?;
    let creds = Credentials {
        owner_id: reg.owner_id,
        machine_id: reg.machine_id,
        api_key: reg.api_key,
        email,
        user_name: user.name,
        api_url: base,
        created_at: crate::metadata::rfc3339(SystemTime::now()),
    };
    creds.save(data_dir)?;
    say("✓ Machine registered successfully!");
    tracing::info!(machine_id = %creds.machine_id, path = %Credentials::path(data_dir).display(), "machine registered; credentials saved");
    Ok(Some(creds))
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Email, password, and whether they came from a terminal prompt.
fn obtain_login(input: &LoginInput) -> Result<(String, String, bool)> {
    let email = input.email.clone().or_else(|| env_nonempty("CYXWIZ_EMAIL"));
    let password_file = input
        .password_file
        .clone()
        .or_else(|| env_nonempty("CYXWIZ_PASSWORD_FILE").map(PathBuf::from));
    let password = match password_file {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .map_err(|e| Error::io("cannot read password file", &p, e))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        None => env_nonempty("CYXWIZ_PASSWORD"),
    };
    if let (Some(e), Some(p)) = (&email, &password) {
        return Ok((e.clone(), p.clone(), false));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::LoginNeedsTerminal);
    }
    Ok((
        email.unwrap_or_default(),
        password.unwrap_or_default(),
        true,
    ))
}

fn prompt_line(label: &str) -> Result<String> {
    print!("{label}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("cannot read", "stdin", e))?;
    Ok(line.trim().to_string())
}

/// Reads a password from the terminal (`/dev/tty`) without echoing it. Echo is turned off
/// *before* the prompt is shown: a line typed the instant the prompt appears (or pasted ahead
/// of it) is never echoed, which a prompt-then-disable order cannot promise. The terminal's
/// mode is restored on every path.
#[allow(unsafe_code)]
fn prompt_hidden(label: &str) -> std::io::Result<String> {
    use std::os::fd::AsRawFd;

    struct Restore(i32, libc::termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: the descriptor is open for the guard's lifetime (the tty outlives it) and
            // `self.1` is the termios read from it.
            unsafe { libc::tcsetattr(self.0, libc::TCSANOW, &self.1) };
        }
    }

    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain old data; zeroed is a valid value to be overwritten.
    let mut mode: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `mode` a properly sized out-parameter.
    if unsafe { libc::tcgetattr(fd, &mut mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let restore = Restore(fd, mode);
    mode.c_lflag &= !libc::ECHO;
    mode.c_lflag |= libc::ECHONL;
    // TCSANOW, not TCSAFLUSH: input typed ahead is kept (and, echo being off, stays hidden).
    // SAFETY: as above; `mode` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    (&tty).write_all(label.as_bytes())?;
    (&tty).flush()?;
    let mut line = String::new();
    std::io::BufReader::new(&tty).read_line(&mut line)?;
    drop(restore);
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

async fn interactive_login(
    base: &str,
    mut email: String,
    mut password: String,
) -> Result<(String, LoginOk)> {
    say(
        "\n╔══════════════════════════════════════════════════════════════╗\n\
         ║           CyxWiz Storage Node - Login Required               ║\n\
         ╚══════════════════════════════════════════════════════════════╝\n\n\
         Please login with your CyxWiz account to register this node.\n",
    );
    let mut last = None;
    for _ in 0..3 {
        if email.is_empty() {
            email = tokio::task::block_in_place(|| prompt_line("Email: "))?;
        }
        if password.is_empty() {
            password = tokio::task::block_in_place(|| prompt_hidden("Password: "))
                .map_err(|e| Error::io("cannot read password from", "terminal", e))?;
        }
        say("\nLogging in...");
        match login(base, &email, &password).await {
            Ok(u) => return Ok((email, u)),
            Err(e @ Error::LoginRefused { .. }) => {
                say(&format!("✗ {e}"));
                last = Some(e);
                email.clear();
                password.clear();
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("three attempts failed"))
}

struct LoginOk {
    token: String,
    name: String,
}

#[derive(Deserialize)]
struct LoginResponse {
    token: String,
    user: LoginUser,
}

#[derive(Deserialize)]
struct LoginUser {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
}

#[derive(Deserialize)]
struct MachineResponse {
    machine_id: String,
    api_key: String,
    owner_id: String,
}

async fn post_json(
    url: &str,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> Result<(u16, Bytes)> {
    let fail = |reason: String| Error::AccountApi {
        url: url.to_string(),
        reason,
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .header("accept", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| fail(e.to_string()))?;
    let resp = tokio::time::timeout(HTTP_TIMEOUT, client.request(req))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(format!("cannot reach it: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(HTTP_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| fail("timed out reading the reply".into()))?
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    Ok((status, bytes))
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

async fn login(base: &str, email: &str, password: &str) -> Result<LoginOk> {
    let url = format!("{base}/api/auth/login");
    let (status, body) = post_json(
        &url,
        None,
        serde_json::json!({ "email": email, "password": password }),
    )
    .await?;
    match status {
        200 => {
            let r: LoginResponse =
                serde_json::from_slice(&body).map_err(|e| Error::AccountApi {
                    url: url.clone(),
                    reason: format!("unexpected login reply: {e}"),
                })?;
            let name = if r.user.name.is_empty() {
                r.user.email
            } else {
                r.user.name
            };
            Ok(LoginOk {
                token: r.token,
                name,
            })
        }
        401 | 403 => Err(Error::LoginRefused {
            url,
            message: error_message(&body),
        }),
        s => Err(Error::AccountApi {
            url,
            reason: format!("HTTP {s}: {}", error_message(&body)),
        }),
    }
}

fn ram_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

async fn register_machine(
    base: &str,
    jwt: &str,
    cfg: &Config,
    node_id: &str,
) -> Result<MachineResponse> {
    let url = format!("{base}/api/machines/register");
    let name = if cfg.node.name.is_empty() {
        node_id
    } else {
        &cfg.node.name
    };
    let body = serde_json::json!({
        "node_id": node_id,
        "name": name,
        "hostname": hostname(),
        "cpu_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "ram_bytes": ram_bytes(),
        "gpu": "",
        "storage_capacity_bytes": cfg.capacity_bytes(),
        "wallet_address": cfg.node.wallet_address,
    });
    let (status, body) = post_json(&url, Some(jwt), body).await?;
    match status {
        200 | 201 => serde_json::from_slice(&body).map_err(|e| Error::AccountApi {
            url,
            reason: format!("unexpected registration reply: {e}"),
        }),
        401 | 403 => Err(Error::LoginRefused {
            url,
            message: error_message(&body),
        }),
        s => Err(Error::AccountApi {
            url,
            reason: format!("HTTP {s}: {}", error_message(&body)),
        }),
    }
}
