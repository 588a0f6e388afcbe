//! Throwaway PostgreSQL and Redis servers for tests.
//!
//! Each test binary starts at most one private server of each kind, on a free port in a temp
//! dir (PostgreSQL as user `postgres` when we are root, with `fsync=off`), and every test gets
//! its own database ([`postgres_db`]) or key prefix ([`redis`]). When
//! `CYXCLOUD_TEST_DATABASE_URL` / `CYXCLOUD_TEST_REDIS_URL` is set, that server is used instead
//! (still with a fresh database / prefix per test). The private servers are started from a
//! thread that lives as long as the test process and get a parent-death signal, so they stop
//! when the test binary exits; per-test databases are dropped when their handle is.
//!
//! Nothing here skips: if a server cannot be started, the test fails with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{free_port, wait_until};

/// A private database on the test PostgreSQL server, dropped with the handle.
#[derive(Debug)]
pub struct PgDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

static PG: OnceLock<String> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh database on the test PostgreSQL server and returns its handle.
pub fn postgres_db() -> PgDb {
    let admin_url = PG
        .get_or_init(|| match std::env::var("CYXCLOUD_TEST_DATABASE_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => start_postgres(),
        })
        .clone();
    let name = format!(
        "cyxtest_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    psql(&admin_url, &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    PgDb {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
    }
}

/// `url` with its database (path) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql (package postgresql-client): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not installed (/usr/lib/postgresql: {e}); run scripts/test, which \
                 installs it, or set CYXCLOUD_TEST_DATABASE_URL"
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin/postgres found: install postgresql")
}

/// `(uid, gid)` of user `postgres` when we are root (PostgreSQL refuses to run as root).
fn postgres_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("we are root but there is no `postgres` user to run PostgreSQL as");
    let f: Vec<&str> = line.split(':').collect();
    Some((
        f[2].parse().expect("postgres uid"),
        f[3].parse().expect("postgres gid"),
    ))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_r(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((u, g)) = ids {
        let ok = Command::new("chown")
            .args(["-R", &format!("{u}:{g}")])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {} to postgres failed", path.display());
    }
}

fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((u, g)) = ids {
        cmd.uid(u).gid(g);
    }
}

/// Starts a private PostgreSQL; returns the URL of its `postgres` database.
fn start_postgres() -> String {
    let bin = pg_bin_dir();
    let ids = postgres_ids();
    remove_stale("cyxcloud-pg-");
    let dir = std::env::temp_dir().join(format!("cyxcloud-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create PostgreSQL temp dir");
    set_mode(&dir, 0o755);
    let data = dir.join("data");
    chown_r(&dir, ids);
    let mut init = Command::new(bin.join("initdb"));
    init.args(["-D"])
        .arg(&data)
        .args(["-U", "cyxcloud", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .env("LC_ALL", "C");
    as_user(&mut init, ids);
    let out = init
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}/initdb: {e}", bin.display()));
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let log = dir.join("postgres.log");
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=64MB",
        ]);
    as_user(&mut cmd, ids);
    spawn_detached_for_process_lifetime(cmd, &log, "postgres");
    let isready = bin.join("pg_isready");
    wait_until(
        Duration::from_secs(60),
        "PostgreSQL to accept connections",
        || {
            let ok = Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(())
        },
    );
    format!("postgres://cyxcloud@127.0.0.1:{port}/postgres")
}

/// Removes temp dirs of earlier test processes that are gone (`<prefix><pid>`).
fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Spawns `cmd` from a thread that lives until the process exits; the child gets SIGQUIT
/// (PostgreSQL: immediate shutdown; Redis: quit) when that thread, i.e. the test process, dies.
fn spawn_detached_for_process_lifetime(mut cmd: Command, log: &Path, name: &str) {
    let out = std::fs::File::create(log).expect("create service log");
    let err = out.try_clone().expect("clone log handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    set_parent_death_signal(&mut cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let name = name.to_string();
    std::thread::Builder::new()
        .name(format!("{name}-keeper"))
        .spawn(move || {
            let r = cmd.spawn().map(|c| c.id());
            let _ = tx.send(r);
            loop {
                std::thread::park();
            }
        })
        .expect("spawn keeper thread");
    rx.recv()
        .expect("keeper thread")
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // it only asks the kernel to signal this child when the spawning thread exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
}

/// A Redis server for one test: its URL and a key prefix no other test uses.
#[derive(Debug, Clone)]
pub struct RedisHandle {
    pub url: String,
    pub prefix: String,
}

static REDIS: OnceLock<String> = OnceLock::new();

/// The test Redis server (private unless `CYXCLOUD_TEST_REDIS_URL` is set) and a fresh prefix.
pub fn redis() -> RedisHandle {
    let url = REDIS
        .get_or_init(|| match std::env::var("CYXCLOUD_TEST_REDIS_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => start_redis(),
        })
        .clone();
    RedisHandle {
        url,
        prefix: format!(
            "cyxtest:{}:{}:",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ),
    }
}

fn start_redis() -> String {
    remove_stale("cyxcloud-redis-");
    let dir = std::env::temp_dir().join(format!("cyxcloud-redis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create Redis temp dir");
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(&dir);
    spawn_detached_for_process_lifetime(cmd, &dir.join("redis.log"), "redis-server");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until(
        Duration::from_secs(30),
        "Redis to accept connections",
        || {
            use std::io::{Read, Write};
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b).ok()?;
            (&b == b"+PONG\r\n").then_some(())
        },
    );
    format!("redis://127.0.0.1:{port}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_their_database() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    }
}
