//! Starting CyxCloud daemons as child processes: sibling binaries of this executable, each in
//! its own process group (so a terminal's Ctrl-C reaches only `cyxcloud`, which then stops
//! them in order) and with a parent-death signal (so they never outlive a killed `cyxcloud`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Path of a CyxCloud binary: next to this executable, else on PATH.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find the {name} binary next to cyxcloud or on PATH: install the Debian packages \
         (installers/README.md), or run from a source checkout with \
         `cargo run --release -p cyxcloud-cli -- up`, which builds it"
    )
}

pub fn exists(name: &str) -> bool {
    sibling(name).is_ok()
}

/// A daemon started by `cyxcloud`.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Spawns `cmd` detached from the terminal's process group, output appended to `log`.
/// With `tie_to_parent`, the child gets SIGTERM if this process dies.
pub fn spawn(
    name: &str,
    mut cmd: Command,
    log: &Path,
    tie_to_parent: bool,
) -> anyhow::Result<Daemon> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    if tie_to_parent {
        tie(&mut cmd);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Daemon {
        name: name.to_string(),
        child,
        log: log.to_path_buf(),
    })
}

#[allow(unsafe_code)]
fn tie(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to a process.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

/// Whether `pid` runs (a zombie, exited but not reaped by its parent, does not count).
pub fn alive(pid: u32) -> bool {
    if !signal(pid, 0) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => true,
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the daemon to stop (`signals` SIGTERMs, spaced a little), waits up to `grace`,
    /// then kills it.
    pub fn stop(&mut self, signals: usize, grace: Duration) {
        for i in 0..signals {
            if !self.running() {
                return;
            }
            signal(self.pid(), libc::SIGTERM);
            if i + 1 < signals {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
