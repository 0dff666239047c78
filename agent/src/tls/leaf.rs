//! Leaf certificates for TLS termination, minted on demand from the local CA.
//!
//! Every leaf names exactly one host (SAN, and CN when it fits), is valid
//! for server authentication only, and lives a week at most. All leaves
//! share one ECDSA P-256 key generated at start and never written to disk:
//! the key adds nothing a leaf does not already grant (every leaf is signed
//! by the same CA), and one key makes a mint a single CA signature.
//!
//! Leaves are kept per lowercase host in a small LRU and minted again when
//! they come within a day of expiry. The proxy mints before it dials
//! upstream, so a CA failure is answered (503 `tls_termination_unavailable`)
//! before any byte leaves the machine; there is no fallback to an
//! uninspected tunnel.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use time::{Duration, OffsetDateTime};

use super::ca::CertificateAuthority;

/// Leaves kept by [`LeafCache::new`].
pub const DEFAULT_CAPACITY: usize = 1024;
/// Backdating absorbs clock skew between the host and sandboxed clients.
const LEAF_BACKDATE: Duration = Duration::hours(1);
const LEAF_LIFETIME: Duration = Duration::days(7);
/// A cached leaf this close to its end is replaced by a fresh one.
const RENEW_BEFORE: Duration = Duration::days(1);
/// X.520 upper bound of a common name; longer hosts are named in SAN only.
const MAX_COMMON_NAME_LEN: usize = 64;
/// Hosts quoted in errors are cut to this many characters.
const MAX_QUOTED_HOST: usize = 80;

/// Why no leaf could be had for a host.
///
/// [`LeafError::InvalidHost`] is the client's doing (an SNI or name that is
/// neither a DNS name nor an IP address); every other variant means TLS
/// termination is unavailable, which the proxy answers with 503
/// `tls_termination_unavailable`, never with an uninspected tunnel.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    #[error("{0:?} is not a valid DNS name or IP address")]
    InvalidHost(String),
    #[error("invalid ALPN protocol list: {0}")]
    InvalidAlpn(String),
    #[error("the Portcullis CA cannot sign leaves now: {0}")]
    CaValidity(String),
    #[error("minting a leaf certificate: {0}")]
    Mint(String),
    #[error("building the TLS server configuration: {0}")]
    Config(String),
}

/// Leaf certificates per host, signed by the Portcullis CA.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    /// Second element of every chain.
    ca_cert: CertificateDer<'static>,
    ca_not_before: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    /// The shared leaf key: its public half goes into every leaf.
    leaf_key: KeyPair,
    /// The same key, as rustls signs with it.
    signing_key: Arc<dyn SigningKey>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<Lru<Leaf>>,
}

#[derive(Clone)]
struct Leaf {
    key: Arc<CertifiedKey>,
    not_after: OffsetDateTime,
}

/// A host in the form leaves are cached and minted for.
struct Host {
    /// Lowercase DNS name without a trailing dot, or an IP address in its
    /// canonical text form.
    name: String,
    san: SanType,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("LeafCache")
            .field("ca", &self.ca)
            .field("ca_not_after", &self.ca_not_after)
            .field("cached", &self.len())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache of [`DEFAULT_CAPACITY`] leaves with a fresh shared leaf key.
    pub fn new(ca: Arc<CertificateAuthority>) -> Result<Self, LeafError> {
        Self::with_capacity(ca, DEFAULT_CAPACITY)
    }

    /// A cache of `capacity` leaves (at least one) with a fresh shared
    /// leaf key.
    pub fn with_capacity(
        ca: Arc<CertificateAuthority>,
        capacity: usize,
    ) -> Result<Self, LeafError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(ca.cert_der())
            .map_err(|e| LeafError::Mint(format!("parsing the CA certificate: {e}")))?;
        let ca_not_before = parsed.validity().not_before.to_datetime();
        let ca_not_after = parsed.validity().not_after.to_datetime();
        let ca_cert = CertificateDer::from(ca.cert_der().to_vec());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| LeafError::Mint(format!("generating the leaf key: {e}")))?;
        let signing_key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                leaf_key.serialize_der(),
            )))
            .map_err(|e| LeafError::Mint(format!("loading the leaf key: {e}")))?;
        Ok(Self {
            ca,
            ca_cert,
            ca_not_before,
            ca_not_after,
            leaf_key,
            signing_key,
            provider,
            leaves: Mutex::new(Lru::new(capacity)),
        })
    }

    /// The CA the leaves chain to.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// How many leaves are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no leaf is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most leaves kept.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// The leaf (chain `[leaf, CA]` with the shared key) for `host`, a DNS
    /// name or an IP address, case-insensitive, one trailing dot allowed.
    /// Minted on a miss and when the cached one is within a day of expiry.
    pub fn certified_key(&self, host: &str) -> Result<Arc<CertifiedKey>, LeafError> {
        self.certified_key_at(host, OffsetDateTime::now_utc())
    }

    /// A server configuration that presents the leaf for `host` whatever
    /// the ClientHello says, offering `alpn` (in preference order, e.g.
    /// `[b"h2", b"http/1.1"]` when upstream speaks both; empty: no ALPN).
    ///
    /// For the proxy, which knows the host from synthetic DNS before the
    /// handshake. A client whose SNI names another host fails to verify
    /// the leaf; comparing SNI with the known host, if wanted, is the
    /// caller's (e.g. through `tokio_rustls::LazyConfigAcceptor`). The
    /// configuration serves one connection and keeps no session cache.
    pub fn server_config_for(
        &self,
        host: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, LeafError> {
        let key = self.certified_key(host)?;
        let mut config = self.server_config(Arc::new(FixedLeaf(key)), alpn)?;
        // Per-connection: nothing could ever be resumed from it.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// A server configuration, meant to be shared, that picks the leaf by
    /// the ClientHello's SNI (see [`SniResolver`]), offering `alpn`.
    pub fn sni_server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, LeafError> {
        let resolver = Arc::new(SniResolver::new(Arc::clone(self)));
        Ok(Arc::new(self.server_config(resolver, alpn)?))
    }

    fn server_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, LeafError> {
        let alpn_protocols = alpn
            .iter()
            .map(|p| match p.len() {
                1..=255 => Ok(p.to_vec()),
                n => Err(LeafError::InvalidAlpn(format!(
                    "protocol names are 1 to 255 bytes, got {n}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| LeafError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn_protocols;
        Ok(config)
    }

    fn certified_key_at(
        &self,
        host: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<CertifiedKey>, LeafError> {
        let host = parse_host(host)?;
        if let Some(leaf) = self.lock().get(&host.name)
            && !self.needs_renewal(&leaf, now)
        {
            return Ok(leaf.key);
        }
        // Minted without the lock: hits for other hosts never wait on a
        // signature. Two racing misses both mint; the first stored wins.
        let fresh = self.mint(&host, now)?;
        let mut leaves = self.lock();
        if let Some(leaf) = leaves.get(&host.name)
            && !self.needs_renewal(&leaf, now)
        {
            return Ok(leaf.key);
        }
        let key = Arc::clone(&fresh.key);
        leaves.insert(host.name, fresh);
        Ok(key)
    }

    /// Within a day of expiry, unless the CA ends first: a fresh leaf
    /// could not outlive this one, so it is kept until it expires.
    fn needs_renewal(&self, leaf: &Leaf, now: OffsetDateTime) -> bool {
        now >= leaf.not_after
            || (leaf.not_after - now <= RENEW_BEFORE && leaf.not_after < self.ca_not_after)
    }

    fn mint(&self, host: &Host, now: OffsetDateTime) -> Result<Leaf, LeafError> {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        if now >= self.ca_not_after {
            return Err(LeafError::CaValidity(format!(
                "the CA certificate expired at {}",
                self.ca_not_after
            )));
        }
        if now < self.ca_not_before {
            return Err(LeafError::CaValidity(format!(
                "the CA certificate is not valid before {}",
                self.ca_not_before
            )));
        }
        let not_before = now
            .checked_sub(LEAF_BACKDATE)
            .map_or(self.ca_not_before, |t| t.max(self.ca_not_before));
        let not_after = now
            .checked_add(LEAF_LIFETIME)
            .map_or(self.ca_not_after, |t| t.min(self.ca_not_after));

        let mut name = DistinguishedName::new();
        if host.name.len() <= MAX_COMMON_NAME_LEN {
            name.push(DnType::CommonName, host.name.as_str());
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name;
        params.subject_alt_names = vec![host.san.clone()];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = self
            .ca
            .mint_leaf(params, &self.leaf_key)
            .map_err(|e| LeafError::Mint(format!("for {}: {e:#}", host.name)))?;
        let chain = vec![cert.der().clone(), self.ca_cert.clone()];
        Ok(Leaf {
            key: Arc::new(CertifiedKey::new(chain, Arc::clone(&self.signing_key))),
            not_after,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<Leaf>> {
        // Every update leaves the LRU consistent, so a panic elsewhere
        // while holding the lock does not spoil it.
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Normalizes and validates a host: an IP address (IPv6 optionally in
/// brackets) or a DNS name, lowercased, one trailing dot dropped.
fn parse_host(raw: &str) -> Result<Host, LeafError> {
    let invalid = || LeafError::InvalidHost(quote(raw));
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if let Some(inner) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let ip = IpAddr::V6(inner.parse::<Ipv6Addr>().map_err(|_| invalid())?);
        return Ok(ip_host(ip));
    }
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(ip_host(ip));
    }
    // `DnsName` accepts one trailing dot; a second one was there.
    if trimmed.ends_with('.') {
        return Err(invalid());
    }
    let name = trimmed.to_ascii_lowercase();
    DnsName::try_from(name.as_str()).map_err(|_| invalid())?;
    let san = Ia5String::try_from(name.as_str()).map_err(|_| invalid())?;
    Ok(Host {
        name,
        san: SanType::DnsName(san),
    })
}

fn ip_host(ip: IpAddr) -> Host {
    Host {
        name: ip.to_string(),
        san: SanType::IpAddress(ip),
    }
}

/// `host` cut short for an error message (SNI can be long).
fn quote(host: &str) -> String {
    let mut out: String = host.chars().take(MAX_QUOTED_HOST).collect();
    if out.len() < host.len() {
        out.push('…');
    }
    out
}

/// Chooses the leaf by the ClientHello's SNI.
///
/// A ClientHello without SNI (a client that dialled an IP address) gets
/// no certificate, and the handshake fails. The proxy usually knows the
/// host from synthetic DNS anyway and then uses
/// [`LeafCache::server_config_for`] instead (its `resolve_for(host)`
/// path), which also serves clients that send no SNI.
#[derive(Debug, Clone)]
pub struct SniResolver {
    cache: Arc<LeafCache>,
}

impl SniResolver {
    pub fn new(cache: Arc<LeafCache>) -> Self {
        Self { cache }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(host) = client_hello.server_name() else {
            log::debug!("TLS ClientHello without SNI; no leaf to present");
            return None;
        };
        match self.cache.certified_key(host) {
            Ok(key) => Some(key),
            Err(e) => {
                log::warn!("no leaf certificate for SNI: {e}");
                None
            }
        }
    }
}

/// Presents one leaf whatever the ClientHello says.
#[derive(Debug)]
struct FixedLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedLeaf {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A least-recently-used map from host to `V`. Recency is a counter per
/// use; `order` maps each entry's last use back to its key, so finding
/// the oldest is `O(log n)`.
struct Lru<V> {
    capacity: usize,
    clock: u64,
    entries: HashMap<String, (V, u64)>,
    order: BTreeMap<u64, String>,
}

impl<V: Clone> Lru<V> {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            clock: 0,
            entries: HashMap::with_capacity(capacity.min(DEFAULT_CAPACITY) + 1),
            order: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value for `key`, now the most recently used.
    fn get(&mut self, key: &str) -> Option<V> {
        let (value, used) = self.entries.get_mut(key)?;
        self.clock += 1;
        if let Some(name) = self.order.remove(used) {
            self.order.insert(self.clock, name);
        }
        *used = self.clock;
        Some(value.clone())
    }

    /// Stores `value` as the most recently used, evicting the least
    /// recently used entries beyond capacity.
    fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if let Some((_, used)) = self.entries.insert(key.clone(), (value, self.clock)) {
            self.order.remove(&used);
        }
        self.order.insert(self.clock, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};
    use x509_parser::extensions::GeneralName;

    const HOST: &str = "api.example.test";

    fn new_cache(capacity: usize) -> (tempfile::TempDir, Arc<LeafCache>) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let cache = LeafCache::with_capacity(Arc::new(ca), capacity).unwrap();
        (tmp, Arc::new(cache))
    }

    /// A client that trusts only the Portcullis CA.
    fn client_trusting(ca: &CertificateAuthority, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    struct Handshake {
        alpn: Option<Vec<u8>>,
        peer_chain: Vec<CertificateDer<'static>>,
    }

    /// A real handshake over localhost TCP, then one byte each way.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Handshake, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.shutdown().await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let result = async {
            let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
            tls.write_all(b"x").await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            assert_eq!(&byte, b"x");
            let (_, conn) = tls.get_ref();
            Ok::<_, std::io::Error>(Handshake {
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                peer_chain: conn.peer_certificates().unwrap_or_default().to_vec(),
            })
        }
        .await
        .map_err(|e| e.to_string());
        let server_result = server_task.await.unwrap();
        if result.is_ok() {
            server_result.unwrap();
        }
        result
    }

    fn dns(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_string()).unwrap()
    }

    #[tokio::test]
    async fn handshake_with_minted_leaf() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let before = OffsetDateTime::now_utc();
        cache.certified_key(HOST).unwrap();
        let server = cache
            .server_config_for(HOST, &[b"h2", b"http/1.1"])
            .unwrap();
        let client = client_trusting(cache.ca(), &[b"h2", b"http/1.1"]);
        let done = handshake(server.clone(), client, dns(HOST)).await.unwrap();
        assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(done.peer_chain.len(), 2);
        assert_eq!(done.peer_chain[1].as_ref(), cache.ca().cert_der());

        let (_, leaf) = x509_parser::parse_x509_certificate(&done.peer_chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(!san.critical);
        assert_eq!(
            san.value.general_names,
            [GeneralName::DNSName("api.example.test")]
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth);
        assert!(!eku.client_auth && !eku.any && eku.other.is_empty());
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        let cn: Vec<_> = leaf
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap())
            .collect();
        assert_eq!(cn, [HOST]);
        let serial = leaf.raw_serial();
        assert_eq!(serial.len(), 16);
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
        let validity = leaf.validity();
        let not_before = validity.not_before.to_datetime();
        let not_after = validity.not_after.to_datetime();
        let after = OffsetDateTime::now_utc();
        assert!(not_before <= before - LEAF_BACKDATE + Duration::seconds(1));
        assert!(not_before >= before - LEAF_BACKDATE - Duration::seconds(1));
        assert!(not_after >= before + LEAF_LIFETIME - Duration::seconds(1));
        assert!(not_after <= after + LEAF_LIFETIME);

        // Without h2 on offer the client gets http/1.1; without ALPN, none.
        let client = client_trusting(cache.ca(), &[b"http/1.1"]);
        let done = handshake(server.clone(), client, dns(HOST)).await.unwrap();
        assert_eq!(done.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let client = client_trusting(cache.ca(), &[]);
        let done = handshake(server, client, dns(HOST)).await.unwrap();
        assert_eq!(done.alpn, None);
    }

    #[tokio::test]
    async fn client_expecting_another_name_fails() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let server = cache.server_config_for(HOST, &[b"http/1.1"]).unwrap();
        let client = client_trusting(cache.ca(), &[b"http/1.1"]);
        let err = handshake(server, client, dns("other.example.test"))
            .await
            .err()
            .unwrap();
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[tokio::test]
    async fn client_trusting_another_ca_fails() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let (_tmp2, other) = new_cache(DEFAULT_CAPACITY);
        let server = cache.server_config_for(HOST, &[]).unwrap();
        let client = client_trusting(other.ca(), &[]);
        let err = handshake(server, client, dns(HOST)).await.err().unwrap();
        // Both CAs carry the same name, so the client finds an anchor
        // whose key does not verify the leaf.
        assert!(
            err.contains("invalid peer certificate: BadSignature"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ip_hosts_get_ip_sans() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let server = cache.server_config_for("127.0.0.1", &[]).unwrap();
        let client = client_trusting(cache.ca(), &[]);
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        let done = handshake(server, client, name).await.unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&done.peer_chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names, [GeneralName::IPAddress(&[127, 0, 0, 1])]);

        for host in ["::1", "[::1]", "0:0:0:0:0:0:0:1"] {
            let key = cache.certified_key(host).unwrap();
            let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
            let san = leaf.subject_alternative_name().unwrap().unwrap().value;
            let mut loopback = [0u8; 16];
            loopback[15] = 1;
            assert_eq!(san.general_names, [GeneralName::IPAddress(&loopback)]);
        }
        // All three spellings are one cache entry.
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn sni_resolver_picks_leaf_by_sni() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let server = cache.sni_server_config(&[b"h2", b"http/1.1"]).unwrap();
        for host in ["a.example.test", "B.Example.Test"] {
            let client = client_trusting(cache.ca(), &[b"h2"]);
            let done = handshake(server.clone(), client, dns(host)).await.unwrap();
            assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
        }
        assert_eq!(cache.len(), 2);
        // Dialling an IP sends no SNI: no certificate, no handshake.
        let client = client_trusting(cache.ca(), &[]);
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        assert!(handshake(server, client, name).await.is_err());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn leaf_key_matches_and_is_shared() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let a = cache.certified_key("a.example.test").unwrap();
        let b = cache.certified_key("b.example.test").unwrap();
        a.keys_match().unwrap();
        b.keys_match().unwrap();
        assert!(Arc::ptr_eq(&a.key, &b.key));
        assert_ne!(a.cert[0], b.cert[0]);
        // Serials differ.
        let (_, ca) = x509_parser::parse_x509_certificate(&a.cert[0]).unwrap();
        let (_, cb) = x509_parser::parse_x509_certificate(&b.cert[0]).unwrap();
        assert_ne!(ca.raw_serial(), cb.raw_serial());
    }

    #[test]
    fn cache_hit_returns_same_arc() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let first = cache.certified_key(HOST).unwrap();
        for spelling in [HOST, "API.Example.TEST", "api.example.test."] {
            let again = cache.certified_key(spelling).unwrap();
            assert!(Arc::ptr_eq(&first, &again), "{spelling}");
        }
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_stays_at_capacity() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let first = cache.certified_key("h0.example.test").unwrap();
        for i in 0..2000 {
            cache.certified_key(&format!("h{i}.example.test")).unwrap();
            assert!(cache.len() <= DEFAULT_CAPACITY);
            // Kept in use, h0 is never the least recently used.
            let again = cache.certified_key("h0.example.test").unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        assert_eq!(cache.capacity(), DEFAULT_CAPACITY);
        // The newest are cached, the oldest were evicted and are minted anew.
        let newest = cache.certified_key("h1999.example.test").unwrap();
        assert!(Arc::ptr_eq(
            &newest,
            &cache.certified_key("h1999.example.test").unwrap()
        ));
        let lru = cache.lock();
        assert!(lru.entries.contains_key("h1999.example.test"));
        assert!(lru.entries.contains_key("h977.example.test"));
        assert!(!lru.entries.contains_key("h976.example.test"));
        assert!(!lru.entries.contains_key("h1.example.test"));
        assert_eq!(lru.order.len(), DEFAULT_CAPACITY);
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.get("a"), Some(1));
        lru.insert("c".into(), 3);
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.get("c"), Some(3));
        lru.insert("c".into(), 4);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.order.len(), 2);
        lru.insert("d".into(), 5);
        assert_eq!(lru.get("a"), None);
        assert_eq!(lru.get("c"), Some(4));
        assert_eq!(Lru::<u8>::new(0).capacity, 1);
    }

    #[test]
    fn leaves_are_renewed_within_a_day_of_expiry() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let now = OffsetDateTime::now_utc();
        let first = cache.certified_key_at(HOST, now).unwrap();
        let later = cache
            .certified_key_at(HOST, now + Duration::days(5))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &later));
        let renewed = cache
            .certified_key_at(HOST, now + Duration::days(6) + Duration::minutes(1))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let ca_end = cache.ca_not_after;
        let near_end = ca_end - Duration::hours(12);
        let key = cache.certified_key_at(HOST, near_end).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        assert_eq!(leaf.validity().not_after.to_datetime(), ca_end);
        // Renewing could not help, so the leaf is kept until it expires.
        let again = cache
            .certified_key_at(HOST, near_end + Duration::hours(1))
            .unwrap();
        assert!(Arc::ptr_eq(&key, &again));
        let err = cache.certified_key_at(HOST, ca_end).unwrap_err();
        assert!(matches!(err, LeafError::CaValidity(_)), "{err}");
        let err = cache
            .certified_key_at("other.example.test", ca_end + Duration::days(1))
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn invalid_hosts_are_rejected() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let long_label = format!("{}.example.test", "a".repeat(64));
        let long_name = format!("{}example.test", "abcdefghi.".repeat(25));
        for host in [
            "",
            ".",
            "*.example.test",
            "exa mple.test",
            "-bad.example.test",
            "bad-.example.test",
            "a..b.test",
            "example.test..",
            "1.2.3",
            "[example.test]",
            "[127.0.0.1]",
            "fe80::1%eth0",
            "bücher.example",
            "example.test:443",
            "a/b",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let err = cache.certified_key(host).unwrap_err();
            assert!(matches!(err, LeafError::InvalidHost(_)), "{host}: {err}");
        }
        assert!(cache.is_empty());
        let err = cache.certified_key(&"x".repeat(10_000)).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn long_hosts_have_no_common_name() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let host = format!("{}.{}.test", "a".repeat(60), "b".repeat(60));
        let key = cache.certified_key(&host).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        assert_eq!(leaf.subject().iter_common_name().count(), 0);
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names, [GeneralName::DNSName(&host)]);
    }

    #[test]
    fn underscores_and_single_labels_are_accepted() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        for host in ["localhost", "_svc.example.test", "xn--bcher-kva.example"] {
            cache.certified_key(host).unwrap();
        }
    }

    #[test]
    fn bad_alpn_is_an_error() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let err = cache.server_config_for(HOST, &[b""]).unwrap_err();
        assert!(matches!(err, LeafError::InvalidAlpn(_)), "{err}");
        let long = [0u8; 256];
        assert!(cache.server_config_for(HOST, &[&long]).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let (_tmp, cache) = new_cache(DEFAULT_CAPACITY);
        let text = format!("{cache:?}");
        assert!(
            text.contains("LeafCache") && !text.contains("PRIVATE"),
            "{text}"
        );
    }
}
