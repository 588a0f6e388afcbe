//! Background work with one home (after Garage's `background::Worker`): every periodic or
//! queue-draining task of a daemon is a named [`Worker`] run by [`Workers`], which gives it
//!
//! * a visible state: `busy`, `idle`, `throttled`, `error` (with the last error and when),
//!   `standby` (another process holds its lease) or `done`, with step and error counts and a
//!   free-form progress line: listed by [`Workers::list`] (for `/api/workers`, `cyxcloud status
//!   -v`) and exported as `cyxcloud_worker_*` metrics;
//! * error backoff: a failed step is retried after 1 s, doubling up to 5 minutes, and the
//!   worker's state says so meanwhile;
//! * an optional lease ([`LeaseStore`], kept in the daemon's metadata store) so that two
//!   processes never run the same worker at once: the runner takes the lease before each step,
//!   renews it every third of its lifetime and releases it on exit; without it the worker waits
//!   in `standby`;
//! * a [`RateLimit`] a worker can take bytes or operations from.
//!
//! Persistent queues belong to the daemon that owns the data (the gateway's tables, a node's
//! store): a worker's step takes the next item from there, so a restart loses nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Any error of a worker's step (workers belong to domain crates with their own error types).
pub type WorkError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future, for the object-safe [`LeaseStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a step of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Did something; there may be more: step again at once.
    Busy,
    /// Nothing to do: wait for [`Worker::wait_for_work`].
    Idle,
    /// Did something but must slow down (rate limit, load): step again after this long.
    Throttled(Duration),
    /// Finished for good: the runner stops.
    Done,
}

/// A unit of background work. Steps should be short (seconds): shutdown waits for the
/// running step to end.
pub trait Worker: Send + 'static {
    /// Stable name: log field, metric label, lease name.
    fn name(&self) -> String;

    /// Does one step of work.
    fn step(&mut self) -> impl Future<Output = Result<Step, WorkError>> + Send;

    /// After [`Step::Idle`]: resolves when there may be work again (a timer, a notification).
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// One line on where the work stands (queue length, bytes to go), for status listings.
    fn progress(&self) -> Option<String> {
        None
    }
}

/// A lease table in a metadata store shared by several processes.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes or renews lease `name` for `holder` until `ttl` from now; `false` when another
    /// holder has an unexpired lease.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, WorkError>>;

    /// Gives lease `name` up if `holder` has it.
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkError>>;
}

/// A worker's lease: which store, which name, who we are, for how long.
#[derive(Clone)]
pub struct Lease {
    pub store: Arc<dyn LeaseStore>,
    pub name: String,
    pub holder: String,
    pub ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// How a worker is run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub lease: Option<Lease>,
    /// First retry delay after an error; doubles per consecutive error up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            lease: None,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A worker's state, as listed and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Busy,
    Idle,
    Throttled,
    Error,
    Standby,
    Done,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Busy,
        State::Idle,
        State::Throttled,
        State::Error,
        State::Standby,
        State::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Busy => "busy",
            State::Idle => "idle",
            State::Throttled => "throttled",
            State::Error => "error",
            State::Standby => "standby",
            State::Done => "done",
        }
    }
}

/// What [`Workers::list`] shows of one worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub state: State,
    pub steps: u64,
    pub errors: u64,
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last error.
    pub last_error_ms: Option<u64>,
    pub progress: Option<String>,
    /// Whether this process holds the worker's lease (`None`: the worker has no lease).
    pub lease_held: Option<bool>,
}

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
struct WorkerMetrics {
    state: Family<Labels, Gauge>,
    steps: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
}

/// The workers of one process.
#[derive(Clone)]
pub struct Workers {
    infos: Arc<Mutex<Vec<Arc<Mutex<WorkerInfo>>>>>,
    metrics: WorkerMetrics,
    stop: CancellationToken,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("workers", &self.list())
            .finish()
    }
}

impl Workers {
    /// Workers that run until `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        Workers {
            infos: Arc::default(),
            metrics: WorkerMetrics::default(),
            stop,
        }
    }

    /// Exports `cyxcloud_worker_state{worker,state}` (1 for the current state, else 0),
    /// `cyxcloud_worker_steps_total{worker}` and `cyxcloud_worker_errors_total{worker}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "cyxcloud_worker_state",
            "Background workers by state (1 = the worker is in this state)",
            self.metrics.state.clone(),
        );
        registry.register(
            "cyxcloud_worker_steps",
            "Steps of work done by each background worker",
            self.metrics.steps.clone(),
        );
        registry.register(
            "cyxcloud_worker_errors",
            "Failed steps of each background worker",
            self.metrics.errors.clone(),
        );
    }

    /// Every worker's status, in start order.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let infos = self.infos.lock().unwrap_or_else(|e| e.into_inner());
        infos
            .iter()
            .map(|i| i.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Runs `worker` on the tokio runtime until it is done or the workers are stopped.
    pub fn spawn<W: Worker>(&self, worker: W, opts: WorkerOptions) -> JoinHandle<()> {
        let name = worker.name();
        let info = Arc::new(Mutex::new(WorkerInfo {
            name: name.clone(),
            state: State::Idle,
            steps: 0,
            errors: 0,
            consecutive_errors: 0,
            last_error: None,
            last_error_ms: None,
            progress: None,
            lease_held: opts.lease.as_ref().map(|_| false),
        }));
        self.infos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.clone());
        let runner = Runner {
            worker,
            opts,
            info,
            metrics: self.metrics.clone(),
            name,
            stop: self.stop.clone(),
            exported: std::cell::Cell::new(None),
        };
        tokio::spawn(runner.run())
    }
}

struct Runner<W: Worker> {
    worker: W,
    opts: WorkerOptions,
    info: Arc<Mutex<WorkerInfo>>,
    metrics: WorkerMetrics,
    name: String,
    stop: CancellationToken,
    /// The state last written to the metrics.
    exported: std::cell::Cell<Option<State>>,
}

impl<W: Worker> Runner<W> {
    fn set(&self, state: State) {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.state = state;
        info.progress = self.worker.progress();
        drop(info);
        // Busy and Idle alternate on every step of a polling worker: touch the gauges only
        // when the state really changes.
        if self.exported.replace(Some(state)) == Some(state) {
            return;
        }
        for s in State::ALL {
            self.metrics
                .state
                .get_or_create(&vec![
                    ("worker".to_string(), self.name.clone()),
                    ("state".to_string(), s.as_str().to_string()),
                ])
                .set(i64::from(s == state));
        }
    }

    fn labels(&self) -> Labels {
        vec![("worker".to_string(), self.name.clone())]
    }

    fn failed(&self, e: &WorkError) -> Duration {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.errors += 1;
        info.consecutive_errors = info.consecutive_errors.saturating_add(1);
        info.last_error = Some(e.to_string());
        info.last_error_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64);
        let n = info.consecutive_errors;
        drop(info);
        self.metrics.errors.get_or_create(&self.labels()).inc();
        self.set(State::Error);
        let backoff = backoff(self.opts.min_backoff, self.opts.max_backoff, n);
        tracing::warn!(worker = %self.name, error = %e, consecutive = n, retry_in = ?backoff, "worker step failed");
        backoff
    }

    fn set_lease(&self, held: bool) {
        self.info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lease_held = Some(held);
    }

    async fn run(mut self) {
        let mut renew_at: Option<tokio::time::Instant> = None;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            if let Some(lease) = self.opts.lease.clone()
                && renew_at.is_none_or(|t| tokio::time::Instant::now() >= t)
            {
                match lease
                    .store
                    .acquire(&lease.name, &lease.holder, lease.ttl)
                    .await
                {
                    Ok(true) => {
                        if renew_at.is_none() {
                            tracing::info!(worker = %self.name, holder = %lease.holder, "lease taken");
                        }
                        self.set_lease(true);
                        renew_at = Some(tokio::time::Instant::now() + lease.ttl / 3);
                    }
                    Ok(false) => {
                        if renew_at.is_some() {
                            tracing::warn!(worker = %self.name, "lease lost to another holder");
                        }
                        renew_at = None;
                        self.set_lease(false);
                        self.set(State::Standby);
                        if !pause(&self.stop, lease.ttl / 3).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        renew_at = None;
                        self.set_lease(false);
                        let wait = self.failed(&e);
                        if !pause(&self.stop, wait).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            self.set(State::Busy);
            let step = self.worker.step().await;
            if step.is_ok() {
                self.metrics.steps.get_or_create(&self.labels()).inc();
                let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
                info.steps += 1;
                info.consecutive_errors = 0;
            }
            match step {
                Ok(Step::Busy) => tokio::task::yield_now().await,
                Ok(Step::Idle) => {
                    self.set(State::Idle);
                    tokio::select! {
                        _ = self.worker.wait_for_work() => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
                Ok(Step::Throttled(d)) => {
                    self.set(State::Throttled);
                    if !pause(&self.stop, d).await {
                        break;
                    }
                }
                Ok(Step::Done) => {
                    self.set(State::Done);
                    break;
                }
                Err(e) => {
                    let wait = self.failed(&e);
                    if !pause(&self.stop, wait).await {
                        break;
                    }
                }
            }
        }
        if let Some(lease) = &self.opts.lease
            && renew_at.is_some()
        {
            if let Err(e) = lease.store.release(&lease.name, &lease.holder).await {
                tracing::warn!(worker = %self.name, error = %e, "could not release the lease");
            }
            self.set_lease(false);
        }
        if self.info.lock().unwrap_or_else(|e| e.into_inner()).state != State::Done {
            self.set(State::Idle);
        }
    }
}

/// Sleeps `d` unless `stop` fires first; `false` when stopped. (A free function: the runner
/// itself is not `Sync`, so its future must not hold `&self` across a wait.)
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// Delay before retrying after the `n`-th consecutive error: `min · 2^(n-1)`, at most `max`.
pub fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// A worker that calls an async function every `every` (the first call at once): the shape of
/// most housekeeping (expiry sweeps, metric refreshes, scans).
pub struct Periodic<F> {
    name: String,
    every: Duration,
    f: F,
    next: tokio::time::Instant,
}

impl<F, Fut> Periodic<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), WorkError>> + Send,
{
    pub fn new(name: impl Into<String>, every: Duration, f: F) -> Self {
        Periodic {
            name: name.into(),
            every,
            f,
            next: tokio::time::Instant::now(),
        }
    }
}

impl<F, Fut> Worker for Periodic<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), WorkError>> + Send,
{
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn step(&mut self) -> Result<Step, WorkError> {
        self.next = tokio::time::Instant::now() + self.every;
        (self.f)().await?;
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.next).await
    }
}

/// A token bucket: `rate` units a second with bursts up to `burst` units. Cloneable; clones
/// share the bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    inner: Option<Arc<tokio::sync::Mutex<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl RateLimit {
    /// No limit: [`RateLimit::take`] returns at once.
    pub fn unlimited() -> Self {
        RateLimit { inner: None }
    }

    /// `rate` units a second (0 = unlimited), bursts up to `burst` units (at least one
    /// second's worth).
    pub fn new(rate: f64, burst: f64) -> Self {
        if rate <= 0.0 {
            return Self::unlimited();
        }
        let burst = burst.max(rate);
        RateLimit {
            inner: Some(Arc::new(tokio::sync::Mutex::new(Bucket {
                rate,
                burst,
                tokens: burst,
                at: tokio::time::Instant::now(),
            }))),
        }
    }

    /// Takes `n` units, waiting until the bucket has them (a request larger than the burst
    /// waits for its whole cost and leaves the bucket empty).
    pub async fn take(&self, n: u64) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut b = inner.lock().await;
        let now = tokio::time::Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * b.rate).min(b.burst);
        b.at = now;
        b.tokens -= n as f64;
        if b.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-b.tokens / b.rate);
            // Holding the lock while waiting keeps takers in order.
            tokio::time::sleep(wait).await;
            b.tokens = 0.0;
            b.at = tokio::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        fail_first: u32,
        calls: Arc<AtomicU32>,
    }

    impl Worker for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        async fn step(&mut self) -> Result<Step, WorkError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(format!("failure {}", n + 1).into());
            }
            Ok(Step::Done)
        }
        async fn wait_for_work(&mut self) {}
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let got: Vec<u64> = (1..=11).map(|n| backoff(min, max, n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_recorded_and_retried_with_backoff() {
        let workers = Workers::new(CancellationToken::new());
        let calls = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let h = workers.spawn(
            Flaky {
                fail_first: 3,
                calls: calls.clone(),
            },
            WorkerOptions::default(),
        );
        h.await.unwrap();
        // Three failures: retried after 1 + 2 + 4 seconds, then done.
        assert_eq!(started.elapsed().as_secs(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let info = &workers.list()[0];
        assert_eq!(info.state, State::Done);
        assert_eq!(
            (info.errors, info.consecutive_errors, info.steps),
            (3, 0, 1)
        );
        assert_eq!(info.last_error.as_deref(), Some("failure 3"));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_runs_every_interval_until_stopped() {
        let stop = CancellationToken::new();
        let workers = Workers::new(stop.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let h = workers.spawn(
            Periodic::new("tick", Duration::from_secs(10), move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), WorkError>(())
                }
            }),
            WorkerOptions::default(),
        );
        tokio::time::sleep(Duration::from_secs(35)).await;
        // At 0, 10, 20 and 30 s.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(workers.list()[0].state, State::Idle);
        stop.cancel();
        h.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    /// Leases in memory, with expiry on tokio's clock.
    #[derive(Default)]
    struct MemLeases(Mutex<HashMap<String, (String, tokio::time::Instant)>>);

    impl LeaseStore for MemLeases {
        fn acquire<'a>(
            &'a self,
            name: &'a str,
            holder: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, WorkError>> {
            Box::pin(async move {
                let mut m = self.0.lock().unwrap();
                let now = tokio::time::Instant::now();
                match m.get(name) {
                    Some((h, until)) if h != holder && *until > now => Ok(false),
                    _ => {
                        m.insert(name.to_string(), (holder.to_string(), now + ttl));
                        Ok(true)
                    }
                }
            })
        }
        fn release<'a>(
            &'a self,
            name: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<(), WorkError>> {
            Box::pin(async move {
                let mut m = self.0.lock().unwrap();
                if m.get(name).is_some_and(|(h, _)| h == holder) {
                    m.remove(name);
                }
                Ok(())
            })
        }
    }

    /// Counts steps per holder and fails if two holders ever step at once.
    struct Exclusive {
        holder: String,
        inside: Arc<AtomicU32>,
        steps: Arc<Mutex<HashMap<String, u32>>>,
    }

    impl Worker for Exclusive {
        fn name(&self) -> String {
            "exclusive".into()
        }
        async fn step(&mut self) -> Result<Step, WorkError> {
            assert_eq!(
                self.inside.fetch_add(1, Ordering::SeqCst),
                0,
                "two holders stepped at once"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.inside.fetch_sub(1, Ordering::SeqCst);
            *self
                .steps
                .lock()
                .unwrap()
                .entry(self.holder.clone())
                .or_default() += 1;
            Ok(Step::Throttled(Duration::from_millis(500)))
        }
        async fn wait_for_work(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lets_one_holder_work_and_passes_on_when_it_stops() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemLeases::default());
        let inside = Arc::new(AtomicU32::new(0));
        let steps = Arc::new(Mutex::new(HashMap::new()));
        let ttl = Duration::from_secs(6);
        let mut runs = Vec::new();
        for holder in ["a", "b"] {
            let stop = CancellationToken::new();
            let workers = Workers::new(stop.clone());
            let h = workers.spawn(
                Exclusive {
                    holder: holder.into(),
                    inside: inside.clone(),
                    steps: steps.clone(),
                },
                WorkerOptions {
                    lease: Some(Lease {
                        store: store.clone(),
                        name: "exclusive".into(),
                        holder: holder.into(),
                        ttl,
                    }),
                    ..Default::default()
                },
            );
            runs.push((stop, workers, h));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        let a_steps = steps.lock().unwrap().get("a").copied().unwrap_or(0);
        assert!(a_steps >= 25, "a holds the lease and works: {a_steps}");
        assert_eq!(
            steps.lock().unwrap().get("b"),
            None,
            "b never works meanwhile"
        );
        assert_eq!(runs[1].1.list()[0].state, State::Standby);
        assert_eq!(runs[1].1.list()[0].lease_held, Some(false));
        // a stops (and releases): b takes over within a third of the lease's lifetime.
        let (stop, _, h) = runs.remove(0);
        stop.cancel();
        h.await.unwrap();
        tokio::time::sleep(ttl / 3 + Duration::from_secs(2)).await;
        assert!(steps.lock().unwrap().get("b").copied().unwrap_or(0) > 0);
        assert_eq!(runs[0].1.list()[0].lease_held, Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_takers() {
        let r = RateLimit::new(100.0, 100.0);
        let t0 = tokio::time::Instant::now();
        r.take(100).await; // the burst
        assert_eq!(t0.elapsed(), Duration::ZERO);
        for _ in 0..5 {
            r.take(50).await;
        }
        // 250 more units at 100/s.
        assert_eq!(t0.elapsed().as_millis(), 2500);
        let u = RateLimit::unlimited();
        u.take(u64::MAX).await;
        assert_eq!(t0.elapsed().as_millis(), 2500);
    }
}
