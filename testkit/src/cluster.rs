//! A real CyxCloud cluster for multi-process tests: one `cyxcloud-gateway` (SQLite in a temp
//! dir unless a database URL is given) and N `cyxcloud-node` processes on RocksDB, all on free
//! ports, killed when the [`Cluster`] is dropped. Fault operations: kill / restart / pause
//! (SIGSTOP) / resume a node, rot on a node's disk, a full disk, a network partition of a
//! node in its own network namespace, stop / restart the gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Proc, TempDir, bin, free_port, http_get, tempdir, wait_for_http, wait_until};

/// Admin credentials every test cluster bootstraps with.
pub const ACCESS_KEY: &str = "CYXTESTADMINKEY0001";
pub const SECRET_KEY: &str = "test-admin-secret-0123456789abcdef";

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// How many of the `nodes` (the first ones) run each in its own network namespace, on a
    /// veth link to the host that [`Cluster::partition_node`] can cut (needs root, `ip` and
    /// `nft`). The gateway then listens on every address, so that they reach it.
    pub netns_nodes: usize,
    /// Heartbeat interval the gateway asks nodes for. 2 s: under a loaded CI machine (dozens of
    /// node processes on 2 cores) shorter intervals made healthy nodes miss 3 heartbeats, and a
    /// chunk placed while one of 14 nodes was briefly "offline" gets 2 shards on one node.
    pub heartbeat_ms: u64,
    /// Chunk size for new writes (small chunks keep tests fast while exercising many chunks).
    pub chunk_size: Option<u64>,
    /// Capacity each node offers, in GB.
    pub capacity_gb: f64,
    /// Extra `--set key=value` settings for the gateway.
    pub gateway_settings: Vec<String>,
    /// `DATABASE_URL` for the gateway (default: SQLite in its data dir).
    pub database_url: Option<String>,
    /// Start a `cyxcloud-rebalancer` (as `cyxcloud up` does). On by default.
    pub rebalancer: bool,
    /// Extra `--set key=value` settings for the rebalancer.
    pub rebalancer_settings: Vec<String>,
    /// Run the cluster on TLS (the gateway's cluster CA certifies it and every node).
    pub tls: bool,
    /// Extra environment for the gateway (e.g. `CYXCLOUD_CLUSTER_KEY_FILE`).
    pub gateway_env: Vec<(String, String)>,
    /// The gateway's data dir (default: `gateway` in the cluster's temp dir): one prepared
    /// before the cluster starts, or one that outlives it.
    pub gateway_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 7,
            netns_nodes: 0,
            heartbeat_ms: 2000,
            chunk_size: None,
            capacity_gb: 4.0,
            gateway_settings: vec![],
            database_url: None,
            rebalancer: true,
            rebalancer_settings: vec![],
            tls: false,
            gateway_env: vec![],
            gateway_dir: None,
        }
    }
}

/// One storage node of a [`Cluster`].
#[derive(Debug)]
pub struct NodeHandle {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub p2p_port: u16,
    pub proc: Option<Proc>,
    pub tls: bool,
    /// Extra environment the node runs with (over its config file).
    pub env: Vec<(String, String)>,
    /// The address it listens on (127.0.0.1, or its namespace's end of its veth link).
    pub ip: Ipv4Addr,
    /// Its network namespace, when it has one.
    pub netns: Option<Netns>,
}

/// A network namespace of one node, linked to the host by a veth pair on a /30 of
/// 198.18.0.0/15 (the range set aside for network tests, RFC 2544). Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The host's end of the link (its address is `host_ip`).
    pub host_veth: String,
    pub host_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
    /// Held for the namespace's life: its /30 is derived from this reserved port, so no other
    /// test process picks the same one.
    _port: u16,
}

/// The nft table that cuts a partitioned node's namespace off (everything but loopback).
const PARTITION: &str = "table inet cyxcloud_partition {\n\
     chain in { type filter hook input priority 0; policy accept; iifname != \"lo\" drop; }\n\
     chain out { type filter hook output priority 0; policy accept; oifname != \"lo\" drop; }\n\
     }\n";

impl Netns {
    /// Creates the namespace and its link; panics with the tool's message when it cannot.
    fn create() -> Netns {
        let port = free_port();
        // A /30 per reserved port: .1 is the host's end, .2 the namespace's.
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + u32::from(port % 32768) * 4;
        let ns = Netns {
            name: format!("cyxtest-{port}"),
            host_veth: format!("cyx{port}h"),
            host_ip: Ipv4Addr::from(base + 1),
            ip: Ipv4Addr::from(base + 2),
            _port: port,
        };
        let peer = format!("cyx{port}n");
        // Leftovers of a killed test process that held this port before.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_veth])
            .output();
        run_ip(&["netns", "add", &ns.name]);
        run_ip(&[
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        run_ip(&["link", "set", &peer, "netns", &ns.name]);
        run_ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_veth,
        ]);
        run_ip(&["link", "set", &ns.host_veth, "up"]);
        let inside = |args: &[&str]| {
            run_ip(&[&["netns", "exec", &ns.name, "ip"][..], args].concat());
        };
        inside(&["addr", "add", &format!("{}/30", ns.ip), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Drops every packet in and out of the namespace (but loopback's): a silent partition,
    /// where connections hang instead of being refused.
    pub fn cut(&self) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft (package nftables)");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(PARTITION.as_bytes())
            .expect("write nft rules");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused the partition"
        );
    }

    /// Lets traffic through again.
    pub fn heal(&self) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(["nft", "delete", "table", "inet", "cyxcloud_partition"])
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with the namespace once nothing runs in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .output();
    }
}

/// Runs `ip ARGS`, panicking with its message when it fails.
fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl NodeHandle {
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.metrics_port)
    }
    pub fn grpc_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.grpc_port)
    }
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }
    /// What the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub opts: ClusterOptions,
    pub http_port: u16,
    pub grpc_port: u16,
    pub gateway: Option<Proc>,
    pub nodes: Vec<NodeHandle>,
    pub rebalancer: Option<Proc>,
    /// The rebalancer's `/metrics` + `/health` port.
    pub rebalancer_port: u16,
    /// Small disks mounted for nodes ([`Cluster::add_node_with_disk`]), unmounted on drop.
    pub disks: Vec<PathBuf>,
    /// Dropped last, so the processes are gone (and their logs printed) before it is removed.
    pub dir: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.disks.is_empty() && self.nodes.iter().all(|n| n.netns.is_none()) {
            return;
        }
        // The nodes on them first (their files are open, they run in the namespaces), then
        // the disks and the namespaces.
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
            n.netns = None;
        }
        for d in &self.disks {
            let _ = Command::new("umount").arg("-l").arg(d).status();
        }
    }
}

impl Cluster {
    /// Starts a gateway and `opts.nodes` nodes and waits until every node is registered.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let dir = tempdir().expect("temp dir");
        let mut c = Cluster {
            dir,
            http_port: free_port(),
            grpc_port: free_port(),
            gateway: None,
            nodes: Vec::new(),
            rebalancer: None,
            rebalancer_port: free_port(),
            disks: Vec::new(),
            opts,
        };
        c.start_gateway();
        for i in 0..c.opts.nodes {
            if i < c.opts.netns_nodes {
                c.add_node_in_netns();
            } else {
                c.add_node(None);
            }
        }
        for i in 0..c.nodes.len() {
            c.wait_registered(i);
        }
        if c.opts.rebalancer {
            c.start_rebalancer();
        }
        c
    }

    /// Starts (or restarts) the rebalancer against the gateway; waits for its `/health`.
    pub fn start_rebalancer(&mut self) {
        let log = self.dir.path().join("rebalancer.log");
        let mut settings = self.opts.rebalancer_settings.clone();
        if self.opts.tls {
            settings.push(format!("ca_cert_file={}", self.ca_path().display()));
        }
        self.rebalancer = Some(crate::spawn_rebalancer(
            &self.grpc_url(),
            (ACCESS_KEY, SECRET_KEY),
            self.rebalancer_port,
            &settings,
            &log,
        ));
        wait_for_http(self.rebalancer_addr(), "/health", Duration::from_secs(60));
    }

    /// Kills the rebalancer (SIGKILL).
    pub fn kill_rebalancer(&mut self) {
        if let Some(mut p) = self.rebalancer.take() {
            p.kill9();
        }
    }

    /// Waits until the rebalancer, in a scan begun after this call, finds every chunk at full
    /// redundancy (no shard pending, lost or bad) and runs no repair.
    pub fn wait_redundant(&self, timeout: Duration) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wait_until(timeout, "every chunk at full redundancy", || {
            let (_, body) = http_get(self.rebalancer_addr(), "/health").ok()?;
            let scanned = json_number(&body, "last_scan_unix_ms")?;
            (scanned > since
                && json_number(&body, "degraded_chunks")? == 0
                && json_number(&body, "in_flight")? == 0)
                .then_some(())
        });
    }

    /// After nodes died: waits until the gateway counts at least `offline` nodes offline
    /// (its `/metrics`), then until the rebalancer has every chunk back at full redundancy.
    pub fn wait_repaired(&self, offline: u64, timeout: Duration) {
        wait_until(timeout, &format!("{offline} nodes offline"), || {
            let (_, m) = http_get(self.http_addr(), "/metrics").ok()?;
            let n = m
                .lines()
                .find(|l| l.starts_with("cyxcloud_gateway_nodes{state=\"offline\"}"))?
                .rsplit(' ')
                .next()?
                .parse::<f64>()
                .ok()?;
            (n as u64 >= offline).then_some(())
        });
        self.wait_redundant(timeout);
    }

    pub fn rebalancer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.rebalancer_port))
    }

    /// Creates and starts one more node (`node-NN`); with `disk_of`, it starts with a copy of
    /// that (stopped) node's shard store, under its own identity: a disk moved to a re-imaged
    /// machine. Does not wait for it to register.
    pub fn add_node(&mut self, disk_of: Option<usize>) -> usize {
        self.add_node_on(None, &[], disk_of, None)
    }

    /// Creates and starts one more node in its own network namespace (see
    /// [`ClusterOptions::netns_nodes`], which must be set for the gateway to be reachable from
    /// it). Does not wait for it to register.
    pub fn add_node_in_netns(&mut self) -> usize {
        assert!(
            self.opts.netns_nodes > 0,
            "set ClusterOptions::netns_nodes: the gateway listens on loopback only"
        );
        let ns = Netns::create();
        self.add_node_in(None, &[], None, None, Some(ns))
    }

    /// Creates and starts one more node with its own id and extra environment (over its
    /// config file: e.g. a wrong `NODE_JOIN_TOKEN`). Does not wait for it to register.
    pub fn add_node_as(&mut self, id: &str, env: &[(&str, &str)]) -> usize {
        self.add_node_on(Some(id), env, None, None)
    }

    /// Creates and starts one more node whose store lives on a disk of `bytes` (a tmpfs
    /// mounted for it, unmounted when the cluster is dropped; needs root) with a 1 MiB
    /// free-space reserve: a node whose disk fills up while it still offers its configured
    /// capacity. Does not wait for it to register.
    pub fn add_node_with_disk(&mut self, bytes: u64) -> usize {
        self.add_node_on(None, &[], None, Some(bytes))
    }

    fn add_node_on(
        &mut self,
        id: Option<&str>,
        env: &[(&str, &str)],
        disk_of: Option<usize>,
        disk_bytes: Option<u64>,
    ) -> usize {
        self.add_node_in(id, env, disk_of, disk_bytes, None)
    }

    fn add_node_in(
        &mut self,
        id: Option<&str>,
        env: &[(&str, &str)],
        disk_of: Option<usize>,
        disk_bytes: Option<u64>,
        netns: Option<Netns>,
    ) -> usize {
        let i = self.nodes.len();
        let id = id.map_or_else(|| format!("node-{:02}", i + 1), str::to_string);
        let dir = self.dir.path().join("nodes").join(&id);
        std::fs::create_dir_all(&dir).expect("node dir");
        // The store's directory: the node dir itself, or a small disk mounted inside it (the
        // node's log stays outside, so it can say what happened when the disk is full).
        let store = match disk_bytes {
            None => dir.clone(),
            Some(bytes) => {
                let disk = dir.join("disk");
                std::fs::create_dir_all(&disk).expect("disk dir");
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                    .arg(&disk)
                    .output()
                    .expect("run mount");
                assert!(
                    out.status.success(),
                    "cannot mount a {bytes}-byte tmpfs for {id} (root needed): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                self.disks.push(disk.clone());
                disk
            }
        };
        if let Some(src) = disk_of {
            let from = &self.nodes[src];
            copy_dir(&from.dir.join("rocksdb"), &dir.join("rocksdb"));
            let meta = std::fs::read_to_string(from.dir.join("metadata.json")).expect("metadata");
            std::fs::write(dir.join("metadata.json"), meta.replace(&from.id, &id))
                .expect("metadata copy");
        }
        // Peers on the host's loopback are out of a namespace's reach.
        let bootstrap = self
            .nodes
            .first()
            .filter(|_| netns.is_none())
            .map(|n| n.p2p_port);
        let (ip, gateway_ip) = netns
            .as_ref()
            .map_or((Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST), |ns| {
                (ns.ip, ns.host_ip)
            });
        let p2p_port = free_port();
        let (grpc_port, metrics_port) = (free_port(), free_port());
        let config = dir.join("config.toml");
        let peers = bootstrap.map_or(String::new(), |p| format!("\"/ip4/127.0.0.1/tcp/{p}\""));
        let text = format!(
            "[node]\nid = \"{id}\"\nname = \"{id}\"\nregion = \"test\"\n\n\
             [storage]\ndata_dir = \"{d}\"\nmax_capacity_gb = {cap}\n{reserve}\n\
             [network]\nbind_address = \"{ip}\"\ngrpc_port = {grpc_port}\np2p_port = {p2p_port}\nbootstrap_peers = [{peers}]\n\n\
             [central]\naddress = \"{scheme}://{gateway_ip}:{gp}\"\nregister = true\nca_cert_file = \"{ca}\"\n\n\
             [cyxwiz_api]\nregister = false\n\n[metrics]\nenabled = true\nport = {metrics_port}\n",
            d = store.display(),
            reserve = if disk_bytes.is_some() {
                // The node's reserve, small beside its small disk (see add_node_with_disk).
                "disk_reserve_mb = 1\n"
            } else {
                ""
            },
            cap = self.opts.capacity_gb,
            gp = self.grpc_port,
            scheme = self.scheme(),
            ca = if self.opts.tls {
                self.ca_path().display().to_string()
            } else {
                String::new()
            },
        );
        std::fs::write(&config, text).expect("node config");
        self.nodes.push(NodeHandle {
            id,
            dir,
            config,
            grpc_port,
            metrics_port,
            p2p_port,
            proc: None,
            tls: self.opts.tls,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip,
            netns,
        });
        self.start_node(i);
        i
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }
    /// The gateway's data dir.
    pub fn gateway_dir(&self) -> PathBuf {
        self.opts
            .gateway_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("gateway"))
    }
    /// What the running gateway has logged so far.
    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(Proc::log).unwrap_or_default()
    }
    fn scheme(&self) -> &'static str {
        if self.opts.tls { "https" } else { "http" }
    }
    /// The gateway's HTTP URL (S3, /health, /api).
    pub fn http_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.http_port)
    }
    /// The gateway's Control gRPC URL.
    pub fn grpc_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.grpc_port)
    }
    /// The cluster CA (PEM) of a TLS cluster: what clients verify the gateway and nodes with.
    pub fn ca_path(&self) -> PathBuf {
        self.gateway_dir().join("tls").join("ca.pem")
    }

    /// Starts (or restarts) the gateway on its ports and data dir; waits for /health.
    pub fn start_gateway(&mut self) {
        let mut cmd = Command::new(bin("cyxcloud-gateway"));
        // Nothing from the environment the tests run in reaches the cluster.
        for k in [
            "DATABASE_URL",
            "REDIS_URL",
            "CYXCLOUD_CLUSTER_KEY_FILE",
            "GATEWAY_REQUIRE_MACHINE_KEYS",
        ] {
            cmd.env_remove(k);
        }
        let host = if self.opts.netns_nodes > 0 {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        cmd.arg("--data-dir")
            .arg(self.gateway_dir())
            .args([
                "--host",
                host,
                "--port",
                &self.http_port.to_string(),
                "--grpc-port",
                &self.grpc_port.to_string(),
            ])
            .args([
                "--set",
                &format!("nodes.heartbeat_interval_ms={}", self.opts.heartbeat_ms),
            ])
            .env("CYXCLOUD_ACCESS_KEY", ACCESS_KEY)
            .env("CYXCLOUD_SECRET_KEY", SECRET_KEY)
            .env("GATEWAY_NODE_JOIN_TOKEN", crate::JOIN_TOKEN)
            .env("GATEWAY_TLS", self.opts.tls.to_string())
            .env(
                "RUST_LOG",
                std::env::var("CYX_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(cs) = self.opts.chunk_size {
            cmd.args(["--set", &format!("storage.chunk_size_bytes={cs}")]);
        }
        for s in &self.opts.gateway_settings {
            cmd.args(["--set", s]);
        }
        if let Some(url) = &self.opts.database_url {
            cmd.env("DATABASE_URL", url);
        }
        for (k, v) in &self.opts.gateway_env {
            cmd.env(k, v);
        }
        let log = self.dir.path().join("gateway.log");
        self.gateway = Some(Proc::spawn("cyxcloud-gateway", cmd, &log));
        if self.opts.tls {
            // Its ports listen once the cluster CA and its certificate exist.
            crate::wait_for_port(self.http_addr(), Duration::from_secs(60));
            crate::wait_for_port(
                SocketAddr::from(([127, 0, 0, 1], self.grpc_port)),
                Duration::from_secs(60),
            );
        } else {
            wait_for_http(self.http_addr(), "/health", Duration::from_secs(60));
        }
    }

    /// Kills the gateway (SIGKILL).
    pub fn kill_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.kill9();
        }
    }

    /// Kills the gateway (SIGKILL) and starts it again on the same ports and data.
    pub fn restart_gateway(&mut self) {
        self.kill_gateway();
        self.start_gateway();
    }

    pub fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut cmd = match &n.netns {
            None => Command::new(bin("cyxcloud-node")),
            Some(ns) => {
                // `ip netns exec` execs the node: its pid is the node's (kill, pause work).
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name])
                    .arg(bin("cyxcloud-node"));
                c
            }
        };
        for k in [
            "CENTRAL_SERVER_ADDR",
            "CENTRAL_ADDRESS",
            "CYXWIZ_EMAIL",
            "CYXWIZ_PASSWORD",
            "CYXWIZ_PASSWORD_FILE",
            "BOOTSTRAP_PEERS",
            "CYXCLOUD_TOKEN_PUBLIC_KEYS",
        ] {
            cmd.env_remove(k);
        }
        cmd.arg("--config")
            .arg(&n.config)
            .current_dir(&n.dir)
            .env("NODE_JOIN_TOKEN", crate::JOIN_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("CYX_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in &n.env {
            cmd.env(k, v);
        }
        let log = n.dir.join("node.log");
        n.proc = Some(Proc::spawn(&n.id, cmd, &log));
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    /// The sum of the gauge or counter `name` (unlabelled) over the running nodes' `/metrics`,
    /// e.g. `cyxcloud_bytes_uploaded` to see that writes reached the nodes.
    pub fn node_metric_sum(&self, name: &str) -> u64 {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up())
            .map(|i| self.node_metric(i, name))
            .sum()
    }

    /// The gauge or counter `name` (unlabelled) in node `i`'s `/metrics`.
    pub fn node_metric(&self, i: usize, name: &str) -> u64 {
        let n = &self.nodes[i];
        let (_, m) = http_get(n.metrics_addr(), "/metrics").expect("node metrics");
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from the metrics of {}", n.id)) as u64
    }

    /// Cuts node `i` (one of [`ClusterOptions::netns_nodes`]) off the network: every packet
    /// to and from it is dropped, so connections to it hang, and its heartbeats do.
    pub fn partition_node(&self, i: usize) {
        self.nodes[i]
            .netns
            .as_ref()
            .expect("only a node in a network namespace can be partitioned")
            .cut();
    }

    /// Ends node `i`'s partition.
    pub fn heal_node(&self, i: usize) {
        self.nodes[i]
            .netns
            .as_ref()
            .expect("only a node in a network namespace can be partitioned")
            .heal();
    }

    /// SIGSTOPs node `i`: it hangs with its sockets open (a node that stopped answering).
    pub fn pause_node(&self, i: usize) {
        if let Some(p) = &self.nodes[i].proc {
            p.pause();
        }
    }

    /// SIGCONTs node `i`.
    pub fn resume_node(&self, i: usize) {
        if let Some(p) = &self.nodes[i].proc {
            p.resume();
        }
    }

    /// Rot on node `i`'s disk: the node is stopped (after one restart, so RocksDB has moved
    /// every shard from its log into blob files), 64 bytes every 32 KiB of each of its blob
    /// files are flipped (so every shard record of 32 KiB or more is hit; the files' first and
    /// last 4 KiB, with their header and footer, are left alone), and it is started again.
    /// Returns how many files were damaged.
    pub fn corrupt_node_disk(&mut self, i: usize) -> usize {
        self.kill_node(i);
        self.start_node(i);
        self.wait_registered(i);
        self.kill_node(i);
        let blobs = blob_files(&self.nodes[i].dir);
        assert!(
            !blobs.is_empty(),
            "no blob file under {}",
            self.nodes[i].dir.display()
        );
        for b in &blobs {
            let mut bytes = std::fs::read(b).expect("read blob file");
            let end = bytes.len().saturating_sub(4096);
            let mut at = 4096;
            while at + 64 <= end {
                for x in &mut bytes[at..at + 64] {
                    *x ^= 0xA5;
                }
                at += 32 * 1024;
            }
            std::fs::write(b, bytes).expect("write blob file");
        }
        self.start_node(i);
        self.wait_registered(i);
        blobs.len()
    }

    /// Waits until node `i` reports itself registered with the gateway.
    pub fn wait_registered(&self, i: usize) {
        let n = &self.nodes[i];
        let addr = n.metrics_addr();
        wait_until(
            Duration::from_secs(60),
            &format!("{} to register", n.id),
            || match http_get(addr, "/health") {
                Ok((_, body)) if body.contains("\"registered\":true") => Some(()),
                _ => None,
            },
        );
    }
}

/// The first unsigned number after `"key":` in a JSON text (enough for flat health reports).
fn json_number(body: &str, key: &str) -> Option<u64> {
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = body[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Every `*.blob` file (RocksDB's blob store, where a node keeps shard bytes) under `dir`.
fn blob_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "blob") {
                out.push(p);
            }
        }
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy file");
        }
    }
}
