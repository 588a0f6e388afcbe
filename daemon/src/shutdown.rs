//! Signal-driven shutdown: the first SIGTERM/SIGINT asks for a graceful stop (a daemon may turn
//! it into draining), a second one means exit now.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown handle.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    immediate: CancellationToken,
    signals: Arc<AtomicU32>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every task to finish gracefully.
    pub fn trigger(&self) {
        self.graceful.cancel();
    }

    /// Asks for an immediate exit (also triggers the graceful token).
    pub fn trigger_now(&self) {
        self.graceful.cancel();
        self.immediate.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Resolves when a graceful shutdown was requested.
    pub async fn wait(&self) {
        self.graceful.cancelled().await
    }

    /// Resolves when an immediate exit was requested.
    pub async fn wait_now(&self) {
        self.immediate.cancelled().await
    }

    pub fn token(&self) -> CancellationToken {
        self.graceful.clone()
    }

    /// Number of termination signals received so far.
    pub fn signals(&self) -> u32 {
        self.signals.load(Ordering::SeqCst)
    }

    /// Spawns the signal listener. `on_first` runs on the first SIGTERM/SIGINT instead of
    /// triggering shutdown when given (e.g. a node starts draining); the second signal always
    /// triggers an immediate exit.
    pub fn listen_for_signals(&self, on_first: Option<Box<dyn Fn() + Send + Sync>>) {
        let this = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let n = this.signals.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    match &on_first {
                        Some(f) => {
                            tracing::info!(
                                "termination signal received; stopping gracefully (send again to exit now)"
                            );
                            f()
                        }
                        None => {
                            tracing::info!(
                                "termination signal received; shutting down (send again to exit now)"
                            );
                            this.trigger()
                        }
                    }
                } else {
                    tracing::warn!("second termination signal; exiting now");
                    this.trigger_now();
                }
            }
        });
    }
}
