//! Node lifecycle: running → draining → drained, and the local control socket that
//! `cyxcloud-node --drain` uses to tell the running node of a data dir to drain.
//!
//! * Draining (by `--drain`, SIGTERM, or the control socket): new puts are refused with
//!   `ErrorCode::Draining`, reads go on, heartbeats report `NODE_STATE_DRAINING`.
//! * Drained: the gateway's heartbeat reply says `desired_state = DRAINED` (it holds nothing
//!   on this node any more: the rebalancer moved every shard). The node then exits, whether
//!   SIGTERM or `--drain` asked for the drain.
//!
//! Control socket: `{data_dir}/node.sock`, one line per request (`drain`, `state`), one line
//! back (`ok draining`, `state running`, ...).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cyxcloud_proto::v1::NodeState;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::error::{Error, Result};

pub const SOCKET: &str = "node.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Draining,
    Drained,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Draining => "draining",
            State::Drained => "drained",
        }
    }

    pub fn to_proto(self) -> NodeState {
        match self {
            State::Running => NodeState::Online,
            State::Draining => NodeState::Draining,
            State::Drained => NodeState::Drained,
        }
    }
}

/// Shared lifecycle state; cloning shares it.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    tx: Arc<watch::Sender<State>>,
    /// Set by a drain request (SIGTERM, `--drain`): the node exits once drained.
    exit_when_drained: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            tx: Arc::new(watch::channel(State::Running).0),
            exit_when_drained: Arc::default(),
        }
    }

    pub fn state(&self) -> State {
        *self.tx.borrow()
    }

    pub fn accepts_puts(&self) -> bool {
        self.state() == State::Running
    }

    /// Whether the node leaves once drained (it was asked to drain, not only to stop puts).
    pub fn exits_when_drained(&self) -> bool {
        self.exit_when_drained
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Running → draining, and exit once drained; returns whether the state changed.
    pub fn drain_and_exit(&self) -> bool {
        self.exit_when_drained
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let changed = self.start_drain();
        // Wake the main loop even when already draining or drained.
        self.poke();
        changed
    }

    /// Running → draining; returns whether the state changed.
    pub fn start_drain(&self) -> bool {
        let changed = self.tx.send_if_modified(|s| {
            if *s == State::Running {
                *s = State::Draining;
                true
            } else {
                false
            }
        });
        if changed {
            tracing::info!("node is draining: new shards are refused, reads are served");
        }
        changed
    }

    /// Draining → drained (on the gateway's word).
    pub fn set_drained(&self) -> bool {
        let changed = self.tx.send_if_modified(|s| {
            if *s == State::Draining {
                *s = State::Drained;
                true
            } else {
                false
            }
        });
        if changed {
            tracing::info!("node is drained: the gateway holds nothing on it any more");
        }
        changed
    }

    /// Wakes every subscriber without changing the state (e.g. results to report).
    pub fn poke(&self) {
        self.tx.send_modify(|_| {});
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Serves the control socket until the returned task is aborted.
pub fn serve_control(data_dir: &Path, life: Lifecycle) -> Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(data_dir);
    let ctl = |reason: String| Error::Control {
        path: path.clone(),
        reason,
    };
    // A socket file left by a crashed node: remove it if nobody answers on it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ctl("another node is running on this data dir".into()));
        }
        std::fs::remove_file(&path).map_err(|e| ctl(e.to_string()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| ctl(e.to_string()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let life = life.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match line.trim() {
                    "drain" => {
                        if life.drain_and_exit() {
                            "ok draining".to_string()
                        } else {
                            format!("ok already {}", life.state().as_str())
                        }
                    }
                    "state" => format!("state {}", life.state().as_str()),
                    other => format!("error unknown command {other:?}"),
                };
                let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
            });
        }
    }))
}

/// Sends one control command to the node running on `data_dir`; returns its reply line.
pub async fn send_control(data_dir: &Path, command: &str) -> Result<String> {
    let path = socket_path(data_dir);
    let ctl = |reason: String| Error::Control {
        path: path.clone(),
        reason,
    };
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| ctl(format!("no node is running on this data dir ({e})")))?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(|e| ctl(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(r)
        .read_line(&mut line)
        .await
        .map_err(|e| ctl(e.to_string()))?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_only_go_forward() {
        let l = Lifecycle::new();
        assert!(l.accepts_puts());
        assert!(!l.set_drained(), "running cannot jump to drained");
        assert!(l.start_drain());
        assert!(!l.start_drain());
        assert_eq!(l.state(), State::Draining);
        assert!(!l.accepts_puts());
        assert!(l.set_drained());
        assert_eq!(l.state().to_proto(), NodeState::Drained);
        assert!(!l.start_drain());
    }

    #[tokio::test]
    async fn control_socket_drains_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lifecycle::new();
        let task = serve_control(dir.path(), l.clone()).unwrap();
        assert_eq!(
            send_control(dir.path(), "state").await.unwrap(),
            "state running"
        );
        assert_eq!(
            send_control(dir.path(), "drain").await.unwrap(),
            "ok draining"
        );
        assert_eq!(l.state(), State::Draining);
        assert_eq!(
            send_control(dir.path(), "drain").await.unwrap(),
            "ok already draining"
        );
        assert!(
            serve_control(dir.path(), l.clone()).is_err(),
            "one node per data dir"
        );
        task.abort();
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            send_control(other.path(), "drain").await,
            Err(Error::Control { .. })
        ));
    }
}
