//! TLS 1.3 for every CyxCloud connection (docs/adr/0008): the cluster CA that issues
//! certificates ([`ClusterCa`]), the server side every daemon accepts connections through
//! ([`ServerTls`]: TLS 1.3 only, certificate swapped in place on reload, handshakes off the
//! accept loop) and the client side that verifies servers against the cluster CA
//! ([`client_config`]). rustls on the `ring` provider.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the cluster CA and of the certificates it issues by default.
pub const CA_DAYS: i64 = 3650;
pub const CERT_DAYS: i64 = 397;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: no PEM {kind} found")]
    NoPem { what: String, kind: &'static str },
    #[error("{what}: {reason}")]
    Bad { what: String, reason: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub type Result<T> = std::result::Result<T, TlsError>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` (temp file, fsync, rename) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // The mode given at creation passes through the umask (a service's 027 would make the
    // public certificate 0640): set it as asked.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what: what.to_string(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::NoPem {
        what: what.to_string(),
        kind: "PRIVATE KEY",
    })
}

/// The PKCS#8 form of an Ed25519 key given by its 32-byte seed (a node's identity key), so that
/// a node serves TLS with the key its id is bound to.
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> PrivateKeyDer<'static> {
    // RFC 8410: SEQUENCE { INTEGER 0, AlgorithmIdentifier { 1.3.101.112 }, OCTET STRING {
    // OCTET STRING seed } }
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
}

/// An Ed25519 public key to certify (the subject's private key stays with it).
struct Ed25519Public([u8; 32]);

impl rcgen::PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// A certificate issued by the cluster CA: its PEM chain (leaf, then the CA) and, when the CA
/// made the key too, the key's PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: Option<String>,
}

/// The cluster's private certificate authority: `ca.pem` (public, handed to every client) and
/// `ca.key` (0600) in its directory, made on first use.
pub struct ClusterCa {
    dir: PathBuf,
    cert_pem: String,
    key: rcgen::KeyPair,
    /// The CA certificate as rcgen signs with it (same name and key as `ca.pem`).
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterCa({})", self.dir.display())
    }
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "CyxCloud");
    dn.push(rcgen::DnType::CommonName, "CyxCloud cluster CA");
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(CA_DAYS);
    p
}

impl ClusterCa {
    pub const CERT_FILE: &'static str = "ca.pem";
    pub const KEY_FILE: &'static str = "ca.key";

    /// Loads the CA of `dir`, making it (and `dir`) on first use.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa> {
        let (cert_path, key_path) = (dir.join(Self::CERT_FILE), dir.join(Self::KEY_FILE));
        if cert_path.exists() || key_path.exists() {
            let cert_pem = String::from_utf8(read(&cert_path)?).map_err(|_| TlsError::Bad {
                what: cert_path.display().to_string(),
                reason: "not UTF-8 PEM".into(),
            })?;
            certs_from_pem(&cert_path.display().to_string(), cert_pem.as_bytes())?;
            let key_pem = String::from_utf8(read(&key_path)?).map_err(|_| TlsError::Bad {
                what: key_path.display().to_string(),
                reason: "not UTF-8 PEM".into(),
            })?;
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Bad {
                what: key_path.display().to_string(),
                reason: e.to_string(),
            })?;
            // The issuer only lends its name and key to what it signs: a certificate made
            // again from them verifies against the `ca.pem` clients hold.
            let issuer = ca_params().self_signed(&key)?;
            return Ok(ClusterCa {
                dir: dir.to_path_buf(),
                cert_pem,
                key,
                issuer,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuer = ca_params().self_signed(&key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, issuer.pem().as_bytes(), 0o644)?;
        Ok(ClusterCa {
            dir: dir.to_path_buf(),
            cert_pem: issuer.pem(),
            key,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where `ca.pem` is (to hand to clients).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(Self::CERT_FILE)
    }

    /// Writes a copy of the CA certificate (public, mode 0644) to `path`, for nodes and
    /// clients that may read it but not the directory that holds the CA's key.
    pub fn export(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| TlsError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        write_file(path, self.cert_pem.as_bytes(), 0o644)
    }

    fn leaf_params(names: &[String], days: i64) -> Result<rcgen::CertificateParams> {
        let mut p = rcgen::CertificateParams::new(names.to_vec())?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.distinguished_name = dn;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        Ok(p)
    }

    /// A server certificate for `names` (DNS names or IP addresses) with a new key.
    pub fn issue(&self, names: &[String], days: i64) -> Result<Issued> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = Self::leaf_params(names, days)?.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: Some(key.serialize_pem()),
        })
    }

    /// A certificate for `names` and the Ed25519 key `public_key` its subject holds (a node's
    /// identity key).
    pub fn issue_for_key(
        &self,
        names: &[String],
        public_key: [u8; 32],
        days: i64,
    ) -> Result<Issued> {
        let cert = Self::leaf_params(names, days)?.signed_by(
            &Ed25519Public(public_key),
            &self.issuer,
            &self.key,
        )?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: None,
        })
    }
}

/// The certificate a server presents, swapped in place (a reload) for new handshakes, and
/// the one for clients that name no server (they connect by IP address, which SNI cannot
/// carry), when it differs.
#[derive(Debug, Default)]
struct Current(
    RwLock<Option<Arc<CertifiedKey>>>,
    RwLock<Option<Arc<CertifiedKey>>>,
);

impl ResolvesServerCert for Current {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name().is_none()
            && let Some(k) = self.1.read().unwrap_or_else(|e| e.into_inner()).clone()
        {
            return Some(k);
        }
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A TLS 1.3 server: its certificate (reloadable) and the acceptor built on it.
#[derive(Clone, Debug)]
pub struct ServerTls {
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
}

fn certified(chain_pem: &[u8], key: PrivateKeyDer<'static>, what: &str) -> Result<CertifiedKey> {
    let certs = certs_from_pem(what, chain_pem)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Bad {
            what: what.to_string(),
            reason: format!("unusable private key: {e}"),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| TlsError::Bad {
        what: what.to_string(),
        reason: format!("the key does not belong to the certificate: {e}"),
    })?;
    Ok(ck)
}

impl ServerTls {
    /// A server presenting the PEM chain `chain_pem` with `key`.
    pub fn new(chain_pem: &[u8], key: PrivateKeyDer<'static>) -> Result<ServerTls> {
        let s = Self::without_certificate()?;
        s.set(chain_pem, key)?;
        Ok(s)
    }

    /// A server with no certificate yet: every handshake fails until [`Self::set`] gives it
    /// one (a node before its gateway certified it).
    pub fn without_certificate() -> Result<ServerTls> {
        let current = Arc::new(Current::default());
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            current,
            config: Arc::new(config),
        })
    }

    /// The same server (same certificate, reloaded together) offering `protocols` in ALPN:
    /// an S3 port offers only `http/1.1`, as S3 does (SigV4 signs the `host` header, which
    /// HTTP/2 does not carry).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> ServerTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        ServerTls {
            current: self.current.clone(),
            config: Arc::new(config),
        }
    }

    /// Whether a certificate is installed.
    pub fn has_certificate(&self) -> bool {
        self.current
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// A server whose certificate chain and key are PEM files (re-read by [`Self::reload`]).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls> {
        let k = key_from_pem(&key.display().to_string(), &read(key)?)?;
        Self::new(&read(cert)?, k)
    }

    /// Presents `chain_pem` with `key` from now on (connections already open keep theirs).
    pub fn set(&self, chain_pem: &[u8], key: PrivateKeyDer<'static>) -> Result<()> {
        let ck = certified(chain_pem, key, "server certificate")?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(ck));
        Ok(())
    }

    /// Presents `chain_pem` with `key` to clients that name no server (by IP address), while
    /// the main certificate serves names: an operator's certificate for a DNS name beside the
    /// cluster CA's for the machine's addresses.
    pub fn set_for_addresses(&self, chain_pem: &[u8], key: PrivateKeyDer<'static>) -> Result<()> {
        let ck = certified(chain_pem, key, "certificate for addresses")?;
        *self.current.1.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(ck));
        Ok(())
    }

    /// Re-reads the certificate files (on SIGHUP); on an error the old certificate stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<()> {
        let k = key_from_pem(&key.display().to_string(), &read(key)?)?;
        self.set(&read(cert)?, k)
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Accepts the connections of `listener` through TLS (see [`TlsListener`]).
    pub fn listen(&self, listener: TcpListener) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<(TlsStream<TcpStream>, SocketAddr)>(64);
        let acceptor = self.acceptor();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors and the like: wait, do not spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // Small control calls must not wait for Nagle + delayed ACK.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            task: task.abort_handle(),
        })
    }

    /// The connections of `listener` past their handshake, as the stream tonic serves.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> io::Result<impl futures::Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static>
    {
        let l = self.listen(listener)?;
        Ok(futures::stream::unfold(l, |mut l| async move {
            l.next().await.map(|(s, _)| (Ok(s), l))
        }))
    }
}

/// A listener whose connections have passed their TLS handshake. Handshakes run off the accept
/// loop (a slow or hostile client holds up nobody) and are bounded in time; a failed one
/// (plaintext, an old TLS version, a client that distrusts the certificate) is logged at debug
/// level and dropped. The accept loop stops when the listener is dropped.
#[derive(Debug)]
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// The next connection; `None` once the accept loop is gone.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(c) => c,
            // The accept loop ended (the runtime is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A TLS 1.3 client configuration that trusts exactly the certificates of `ca_pem` (the
/// cluster CA): no system roots, no fallback.
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem("CA certificate", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Bad {
            what: "CA certificate".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server(tls: &ServerTls) -> SocketAddr {
        use futures::StreamExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = Box::pin(tls.incoming(l).unwrap());
        tokio::spawn(async move {
            while let Some(Ok(mut s)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    async fn hello(
        addr: SocketAddr,
        cfg: rustls::ClientConfig,
    ) -> std::result::Result<Vec<u8>, String> {
        let c = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1".to_string()).unwrap();
        let mut s = c.connect(name, tcp).await.map_err(|e| e.to_string())?;
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn server_of(ca: &ClusterCa) -> ServerTls {
        let i = ca
            .issue(&["127.0.0.1".into(), "localhost".into()], 30)
            .unwrap();
        let key = key_from_pem("k", i.key_pem.unwrap().as_bytes()).unwrap();
        ServerTls::new(i.chain_pem.as_bytes(), key).unwrap()
    }

    #[tokio::test]
    async fn clients_verify_against_the_cluster_ca_only() {
        let dir = tempfile_dir();
        let ca = ClusterCa::load_or_create(&dir.join("a")).unwrap();
        let other = ClusterCa::load_or_create(&dir.join("b")).unwrap();
        let tls = server_of(&ca);
        let addr = echo_server(&tls).await;
        let ok = client_config(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(hello(addr, ok).await.unwrap(), b"hello");
        // A client trusting another CA refuses the server, saying why.
        let e = hello(addr, client_config(other.cert_pem().as_bytes()).unwrap())
            .await
            .unwrap_err();
        assert!(
            e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
            "{e}"
        );
        // The CA kept on disk still signs certificates its clients trust.
        let again = ClusterCa::load_or_create(&dir.join("a")).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let addr2 = echo_server(&server_of(&again)).await;
        let ok = client_config(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(hello(addr2, ok).await.unwrap(), b"hello");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("a").join(ClusterCa::KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The exported copy is the certificate alone, readable by all.
        let copy = dir.join("public").join("ca.pem");
        ca.export(&copy).unwrap();
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), ca.cert_pem());
        let mode = std::fs::metadata(&copy).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
    }

    #[tokio::test]
    async fn plaintext_old_versions_and_wrong_names_fail_the_handshake() {
        let dir = tempfile_dir();
        let ca = ClusterCa::load_or_create(&dir).unwrap();
        let addr = echo_server(&server_of(&ca)).await;
        // Plaintext HTTP to the TLS port: no HTTP answer, the connection ends.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        assert!(
            !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
            "{out:?}"
        );
        // A TLS 1.2-only client is refused.
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_from_pem("ca", ca.cert_pem().as_bytes()).unwrap() {
            roots.add(c).unwrap();
        }
        let old = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let c = tokio_rustls::TlsConnector::from(Arc::new(old));
        let r = c
            .connect(
                ServerName::try_from("127.0.0.1".to_string()).unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await;
        assert!(r.is_err());
        // A name the certificate does not carry.
        let c = tokio_rustls::TlsConnector::from(Arc::new(
            client_config(ca.cert_pem().as_bytes()).unwrap(),
        ));
        let e = c
            .connect(
                ServerName::try_from("other.example".to_string()).unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("NotValidForName") || e.contains("not valid for"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_reload_presents_the_new_certificate_to_new_connections() {
        let dir = tempfile_dir();
        let (a, b) = (
            ClusterCa::load_or_create(&dir.join("a")).unwrap(),
            ClusterCa::load_or_create(&dir.join("b")).unwrap(),
        );
        let tls = server_of(&a);
        let addr = echo_server(&tls).await;
        let trusts = |ca: &ClusterCa| client_config(ca.cert_pem().as_bytes()).unwrap();
        assert!(hello(addr, trusts(&a)).await.is_ok());
        let i = b.issue(&["127.0.0.1".into()], 30).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &i.chain_pem).unwrap();
        std::fs::write(&key, i.key_pem.unwrap()).unwrap();
        tls.reload(&cert, &key).unwrap();
        assert!(hello(addr, trusts(&b)).await.is_ok());
        assert!(hello(addr, trusts(&a)).await.is_err());
        // A broken file keeps the old certificate.
        std::fs::write(&key, "not a key").unwrap();
        assert!(tls.reload(&cert, &key).is_err());
        assert!(hello(addr, trusts(&b)).await.is_ok());
    }

    #[tokio::test]
    async fn clients_by_address_get_the_address_certificate_and_named_clients_the_main_one() {
        let dir = tempfile_dir();
        let (op, cluster) = (
            ClusterCa::load_or_create(&dir.join("operator")).unwrap(),
            ClusterCa::load_or_create(&dir.join("cluster")).unwrap(),
        );
        // The operator's certificate names only a DNS name; the cluster's, the address.
        let named = op.issue(&["localhost".into()], 30).unwrap();
        let tls = ServerTls::new(
            named.chain_pem.as_bytes(),
            key_from_pem("k", named.key_pem.unwrap().as_bytes()).unwrap(),
        )
        .unwrap();
        let by_ip = cluster.issue(&["127.0.0.1".into()], 30).unwrap();
        tls.set_for_addresses(
            by_ip.chain_pem.as_bytes(),
            key_from_pem("k", by_ip.key_pem.unwrap().as_bytes()).unwrap(),
        )
        .unwrap();
        let addr = echo_server(&tls).await;
        // By IP address (no SNI): the cluster's certificate.
        assert!(
            hello(addr, client_config(cluster.cert_pem().as_bytes()).unwrap())
                .await
                .is_ok()
        );
        // By name: the operator's.
        let c = tokio_rustls::TlsConnector::from(Arc::new(
            client_config(op.cert_pem().as_bytes()).unwrap(),
        ));
        let s = c
            .connect(
                ServerName::try_from("localhost".to_string()).unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await;
        assert!(s.is_ok(), "{:?}", s.err());
    }

    #[tokio::test]
    async fn a_node_serves_with_its_identity_key_certified_by_the_ca() {
        let dir = tempfile_dir();
        let ca = ClusterCa::load_or_create(&dir).unwrap();
        let seed = [7u8; 32];
        let public = ed25519_public(&seed);
        let i = ca.issue_for_key(&["127.0.0.1".into()], public, 30).unwrap();
        assert!(i.key_pem.is_none());
        let tls = ServerTls::new(i.chain_pem.as_bytes(), ed25519_pkcs8(&seed)).unwrap();
        let addr = echo_server(&tls).await;
        assert!(
            hello(addr, client_config(ca.cert_pem().as_bytes()).unwrap())
                .await
                .is_ok()
        );
        // The certificate of one key does not go with another key.
        let e = ServerTls::new(i.chain_pem.as_bytes(), ed25519_pkcs8(&[8u8; 32])).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused_as_expired() {
        let dir = tempfile_dir();
        let ca = ClusterCa::load_or_create(&dir).unwrap();
        let i = ca.issue(&["127.0.0.1".into()], -2).unwrap();
        let key = key_from_pem("k", i.key_pem.unwrap().as_bytes()).unwrap();
        let addr = echo_server(&ServerTls::new(i.chain_pem.as_bytes(), key).unwrap()).await;
        let e = hello(addr, client_config(ca.cert_pem().as_bytes()).unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("Expired") || e.contains("expired"), "{e}");
    }

    /// The public key of an Ed25519 seed, through rcgen's PKCS#8 parser (no other Ed25519
    /// implementation here).
    fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
        let der = match ed25519_pkcs8(seed) {
            PrivateKeyDer::Pkcs8(p) => p.secret_pkcs8_der().to_vec(),
            _ => unreachable!(),
        };
        let kp = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
        kp.public_key_raw().try_into().unwrap()
    }

    fn tempfile_dir() -> PathBuf {
        tempfile::tempdir().unwrap().keep()
    }
}
