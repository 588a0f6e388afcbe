//! The gateway's Prometheus metrics (served on `/metrics` by `cyxcloud_daemon::ops`).
//!
//! * `cyxcloud_gateway_requests_total{method,code}`: control/registry RPCs by outcome.
//! * `cyxcloud_gateway_request_duration_seconds{method}`: their latency.
//! * `cyxcloud_s3_requests_total{method,status}`: S3 API requests by HTTP method and status
//!   (a client's retries can hide a 5xx; this cannot).
//! * `cyxcloud_s3_request_duration_seconds{method}`: their latency to the response head.
//! * `cyxcloud_s3_aborted_responses_total`: responses cut off after their head (an object
//!   that stopped being readable mid-transfer): a server error no status code shows.
//! * `cyxcloud_gateway_nodes{state}`: registered nodes by state.
//! * `cyxcloud_gateway_objects`, `cyxcloud_gateway_bytes`: files and their logical bytes.
//! * `cyxcloud_gateway_journal_seq`: the last journal sequence.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::db::{Db, args};

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Mutex<Registry>>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    s3_requests: Family<Labels, Counter>,
    s3_latency: Family<Labels, Histogram>,
    s3_aborted: Counter,
    nodes: Family<Labels, Gauge>,
    objects: Gauge,
    bytes: Gauge<u64, AtomicU64>,
    journal_seq: Gauge<u64, AtomicU64>,
    db_ok: Arc<AtomicBool>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 18))
        });
        let s3_requests = Family::<Labels, Counter>::default();
        let s3_latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let s3_aborted = Counter::default();
        let nodes = Family::<Labels, Gauge>::default();
        let objects = Gauge::default();
        let bytes = Gauge::<u64, AtomicU64>::default();
        let journal_seq = Gauge::<u64, AtomicU64>::default();
        r.register(
            "cyxcloud_gateway_requests",
            "Control and registry RPCs by method and result code",
            requests.clone(),
        );
        r.register(
            "cyxcloud_gateway_request_duration_seconds",
            "Control and registry RPC latency",
            latency.clone(),
        );
        r.register(
            "cyxcloud_s3_requests",
            "S3 API requests by HTTP method and response status",
            s3_requests.clone(),
        );
        r.register(
            "cyxcloud_s3_request_duration_seconds",
            "S3 API latency to the response head",
            s3_latency.clone(),
        );
        r.register(
            "cyxcloud_s3_aborted_responses",
            "S3 responses cut off after their head",
            s3_aborted.clone(),
        );
        r.register(
            "cyxcloud_gateway_nodes",
            "Registered storage nodes by state",
            nodes.clone(),
        );
        r.register(
            "cyxcloud_gateway_objects",
            "Files in the namespace",
            objects.clone(),
        );
        r.register(
            "cyxcloud_gateway_bytes",
            "Logical bytes of all files",
            bytes.clone(),
        );
        r.register(
            "cyxcloud_gateway_journal_seq",
            "Sequence of the last change journal event",
            journal_seq.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(r)),
            requests,
            latency,
            s3_requests,
            s3_latency,
            s3_aborted,
            nodes,
            objects,
            bytes,
            journal_seq,
            db_ok: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether the last refresh reached the metadata store.
    pub fn db_ok(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
    }

    /// Records one RPC.
    pub fn observe(&self, method: &str, code: &str, started: Instant) {
        self.requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("code".into(), code.into()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("method".into(), method.into())])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records one S3 request.
    pub fn observe_s3(&self, method: &str, status: u16, started: Instant) {
        self.s3_requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.s3_latency
            .get_or_create(&vec![("method".into(), method.into())])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records an S3 response cut off after its head.
    pub fn s3_aborted(&self) {
        self.s3_aborted.inc();
    }

    /// Refreshes the gauges from the store.
    pub async fn refresh(&self, db: &Db) -> crate::Result<()> {
        let rows = db
            .all("SELECT state, COUNT(*) FROM nodes GROUP BY state", args![])
            .await?;
        for s in [
            cyxcloud_proto::v1::NodeState::Online,
            cyxcloud_proto::v1::NodeState::Offline,
            cyxcloud_proto::v1::NodeState::Draining,
            cyxcloud_proto::v1::NodeState::Drained,
        ] {
            let n = rows
                .iter()
                .find(|r| r.i64(0).ok() == Some(s as i64))
                .map(|r| r.i64(1))
                .transpose()?
                .unwrap_or(0);
            self.nodes
                .get_or_create(&vec![("state".into(), state_name(s).into())])
                .set(n);
        }
        let r = db
            .one(
                "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM inodes WHERE kind = 1",
                args![],
            )
            .await?;
        self.objects.set(r.i64(0)?);
        self.bytes.set(r.u64(1)?);
        self.journal_seq.set(crate::journal::head(db).await?);
        Ok(())
    }

    /// One refresh for the `metrics-refresh` worker; its outcome is also the database
    /// check of `/health`.
    pub async fn refresh_recorded(&self, db: &Db) -> crate::Result<()> {
        let r = self.refresh(db).await;
        self.db_ok.store(r.is_ok(), Ordering::Relaxed);
        r
    }
}

pub fn state_name(s: cyxcloud_proto::v1::NodeState) -> &'static str {
    use cyxcloud_proto::v1::NodeState;
    match s {
        NodeState::Online => "online",
        NodeState::Offline => "offline",
        NodeState::Draining => "draining",
        NodeState::Drained => "drained",
        NodeState::Unspecified => "unknown",
    }
}
