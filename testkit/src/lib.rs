//! `cyxcloud-testkit`: what every multi-process test needs, with no async runtime so any test
//! can use it.
//!
//! * [`free_port`]: a port outside the kernel's ephemeral range, locked against the other test
//!   processes, so it stays free until the child it is meant for binds it.
//! * [`Proc`]: a child process killed (SIGKILL) and reaped on drop, its output in a log file
//!   that is printed when a test fails, with fault operations: `kill9`, `term`, `pause`,
//!   `resume`.
//! * [`wait_until`] / [`wait_for_http`]: readiness by polling with a deadline, never a fixed
//!   sleep.
//! * [`bin`]: the path of a workspace binary next to the running test.
//! * [`services`]: throwaway PostgreSQL databases and Redis key spaces (private servers started
//!   on demand, or the ones named by `CYXCLOUD_TEST_DATABASE_URL` / `CYXCLOUD_TEST_REDIS_URL`).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod services;

pub mod cluster;

/// Starts `cyxcloud-rebalancer` against the gateway at `grpc_url` with admin credentials
/// `(access, secret)`, `/metrics` and `/health` on `metrics_port`, extra `--set` settings, its
/// output in `log` (the environment's rebalancer variables are cleared, so only these count).
pub fn spawn_rebalancer(
    grpc_url: &str,
    (access, secret): (&str, &str),
    metrics_port: u16,
    settings: &[String],
    log: &Path,
) -> Proc {
    let mut cmd = Command::new(bin("cyxcloud-rebalancer"));
    for k in [
        "SCAN_INTERVAL_SECS",
        "REPAIR_PARALLELISM",
        "RATE_LIMIT_BYTES_PER_HOUR",
        "AUDIT_PERIOD_SECS",
        "GC_GRACE_SECS",
        "CYXCLOUD_GRPC_ADDRESS",
        "CYXCLOUD_SECRET_KEY_FILE",
    ] {
        cmd.env_remove(k);
    }
    cmd.args(["--gateway", grpc_url])
        .args(["--set", &format!("metrics.port={metrics_port}")])
        .env("CYXCLOUD_ACCESS_KEY", access)
        .env("CYXCLOUD_SECRET_KEY", secret)
        .env(
            "RUST_LOG",
            std::env::var("CYX_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
    for s in settings {
        cmd.args(["--set", s]);
    }
    Proc::spawn("cyxcloud-rebalancer", cmd, log)
}

pub use tempfile::{TempDir, tempdir};

/// The node join token of every test cluster's gateway, which its nodes present.
pub const JOIN_TOKEN: &str = "cyxcloud-test-join-token-0123456789";

/// Returns a TCP port for a child process to bind on 127.0.0.1 (or 0.0.0.0). Between this call
/// and the child's bind nobody else may take it, so it is
/// * outside the kernel's ephemeral range (`ip_local_port_range`), where every outgoing
///   connection and every bind to port 0 of any process takes its port;
/// * reserved against the other test processes (nextest runs each test in its own) by an
///   exclusive lock on `$TMPDIR/cyxcloud-test-ports/<port>`, held until this process exits;
/// * never handed out twice by this process, and free (bindable) when handed out.
pub fn free_port() -> u16 {
    /// Ports handed out, the locks that reserve them, where the next search starts.
    type Given = (HashSet<u16>, Vec<std::fs::File>, u32);
    static GIVEN: Mutex<Option<Given>> = Mutex::new(None);
    let (lo, hi) = reservable_ports();
    let span = u32::from(hi - lo) + 1;
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (given, locks, next) = g.get_or_insert_with(|| {
        // Processes start at different places, so they rarely contend for one lock.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        (HashSet::new(), Vec::new(), seed % span)
    });
    let dir = std::env::temp_dir().join("cyxcloud-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..span {
        let port = lo + (*next % span) as u16;
        *next = next.wrapping_add(1);
        if given.contains(&port) {
            continue;
        }
        let Some(lock) = lock_port(&dir, port) else {
            continue;
        };
        let bindable = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok();
        if bindable {
            given.insert(port);
            locks.push(lock);
            return port;
        }
    }
    panic!("no free port in {lo}..={hi} outside the ephemeral range");
}

/// The ports [`free_port`] hands out: below the ephemeral range (or above it when it starts
/// too low), never below 10000.
fn reservable_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut it = range
        .as_deref()
        .unwrap_or("32768 60999")
        .split_whitespace()
        .filter_map(|n| n.parse::<u32>().ok());
    let (eph_lo, eph_hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    if eph_lo >= 12_000 {
        (10_000, (eph_lo - 1).min(u32::from(u16::MAX)) as u16)
    } else if eph_hi <= 63_000 {
        ((eph_hi + 1) as u16, u16::MAX)
    } else {
        panic!("the ephemeral port range {eph_lo}-{eph_hi} leaves no room for test ports")
    }
}

/// An exclusive, non-blocking lock on `dir/<port>`, or `None` when another process holds it.
fn lock_port(dir: &Path, port: u16) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .ok()?;
    flock_exclusive(f.as_raw_fd()).then_some(f)
}

#[allow(unsafe_code)]
fn flock_exclusive(fd: i32) -> bool {
    // SAFETY: flock(2) on a descriptor this process owns; no memory is passed.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Path of the workspace binary `name` (built by `cargo test --workspace` next to the test
/// executable, in `target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CYXCLOUD_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "binary {} not built: run `cargo build --bins` or `cargo test --workspace`",
        p.display()
    );
    p
}

/// Polls `f` every few milliseconds until it returns `Some`, or panics with `what` after
/// `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET over a plain socket: `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| {
            if h.to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(b)
            } else {
                b.to_string()
            }
        })
        .unwrap_or_default();
    Ok((status, body))
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `GET path` on `addr` answers 200; returns the body.
pub fn wait_for_http(addr: SocketAddr, path: &str, timeout: Duration) -> String {
    wait_until(
        timeout,
        &format!("http://{addr}{path} to answer 200"),
        || match http_get(addr, path) {
            Ok((200, body)) => Some(body),
            _ => None,
        },
    )
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    wait_until(timeout, &format!("{addr} to accept connections"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe_kill(c.id() as i32, sig);
        }
    }

    /// SIGKILL and reap: the crash fault.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM.
    pub fn term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGSTOP: the process hangs without closing sockets.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for the process to exit on its own within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        let child = self.child.as_mut().expect("process already reaped");
        let status = wait_until(timeout, &format!("{name} to exit"), || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!(
                "---- last lines of {} ({}) ----\n{tail}\n----",
                self.name,
                self.log.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_outside_the_ephemeral_range_and_locked() {
        let a: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 50);
        let (lo, hi) = reservable_ports();
        assert!(a.iter().all(|p| (lo..=hi).contains(p)), "{a:?}");
        assert!(lo >= 10_000);
        // Another process cannot take them: its lock attempt fails while this process lives.
        let dir = std::env::temp_dir().join("cyxcloud-test-ports");
        let out = Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(dir.join(a[0].to_string()))
            .arg("true")
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(75), "the port's lock was free");
    }

    #[test]
    fn proc_is_killed_on_drop_and_faults_work() {
        let dir = tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut p = Proc::spawn("sleep", cmd, &dir.path().join("sleep.log"));
        let pid = p.pid();
        assert!(p.is_running());
        // SIGSTOP stops it (state T in /proc), SIGCONT lets it go on (R or S) again.
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // "pid (comm) S ...": the state follows the command's closing parenthesis.
            stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
        };
        assert_ne!(state(), 'T');
        p.pause();
        wait_until(Duration::from_secs(10), "sleep to stop", || {
            (state() == 'T').then_some(())
        });
        p.resume();
        wait_until(Duration::from_secs(10), "sleep to run again", || {
            (state() != 'T').then_some(())
        });
        drop(p);
        // The pid is reaped: /proc/<pid> no longer refers to our sleep.
        let status = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!status.contains("sleep"));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; exit 3"]);
        let mut p = Proc::spawn("sh", cmd, &dir.path().join("sh.log"));
        assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(3));
        assert!(p.log().contains("hello"));
    }
}
