//! DNS responder for sandboxed workloads.
//!
//! The kernel hooks redirect every UDP port-53 datagram a sandboxed process
//! sends to [`DnsResponder::serve`]. The agent answers A/AAAA from a
//! [`synthetic::SyntheticPool`]: each name gets an address of its own, so a
//! later connection to it says exactly which name the workload meant, and
//! nothing is resolved upstream until a policy allows a connection (the
//! proxy then resolves through [`HostsThenSystem`]).

pub mod hosts;
pub mod synthetic;
pub mod wire;

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use self::hosts::HostsTable;
use self::wire::{Query, Rcode, WireError};

/// Default TTL we hand to clients: short, so policy or upstream changes
/// take effect quickly.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Queries handled at once; beyond this we answer SERVFAIL immediately.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Bound on one system-resolver lookup before we answer SERVFAIL.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// getaddrinfo calls running at once. Each occupies a blocking thread until
/// glibc gives up (which can be far longer than our timeout), so this keeps
/// a workload from exhausting tokio's blocking pool.
pub const DEFAULT_MAX_SYSTEM_LOOKUPS: usize = 64;
/// Receive buffer: larger than any query a stub resolver sends.
const RECV_BUFFER_LEN: usize = 4096;

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (answered as NXDOMAIN).
    #[error("name not found")]
    NotFound,
    /// The lookup itself failed or timed out (answered as SERVFAIL).
    #[error("lookup failed: {0}")]
    Failed(String),
}

/// Turns a name (lowercase, no trailing dot, as in [`Query::name`]) into
/// addresses of either family; the responder picks the family asked for.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, name: &str)
    -> impl Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send;

    /// Resolves on behalf of the client at `client`; answers that depend on
    /// who asks (one synthetic pool per sandbox) override this.
    fn resolve_for(
        &self,
        client: SocketAddr,
        name: &str,
    ) -> impl Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send {
        let _ = client;
        self.resolve(name)
    }
}

/// Resolves from a configured hosts table, then the host's own resolver
/// (getaddrinfo, i.e. nsswitch: /etc/hosts, /etc/resolv.conf).
pub struct HostsThenSystem {
    hosts: HostsTable,
    timeout: Duration,
    lookups: Arc<Semaphore>,
}

impl HostsThenSystem {
    pub fn new(hosts: HostsTable) -> Self {
        Self {
            hosts,
            timeout: DEFAULT_LOOKUP_TIMEOUT,
            lookups: Arc::new(Semaphore::new(DEFAULT_MAX_SYSTEM_LOOKUPS)),
        }
    }

    /// Like [`Self::new`], with the host's /etc/hosts underneath `configured`
    /// (configured entries win). System lookups ask for the absolute name,
    /// which glibc does not match against /etc/hosts, so this is how its
    /// entries are honoured. A missing /etc/hosts is not an error.
    pub fn with_etc_hosts(configured: HostsTable) -> anyhow::Result<Self> {
        let mut hosts = match HostsTable::load("/etc/hosts") {
            Ok(table) => table,
            Err(err) if is_not_found(&err) => HostsTable::default(),
            Err(err) => return Err(err),
        };
        hosts.merge(configured);
        Ok(Self::new(hosts))
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max_system_lookups(mut self, max: usize) -> Self {
        self.lookups = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
        self
    }

    pub fn hosts(&self) -> &HostsTable {
        &self.hosts
    }

    async fn system_lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if !is_resolvable_hostname(name) {
            return Err(ResolveError::NotFound);
        }
        let permit = Arc::clone(&self.lookups)
            .try_acquire_owned()
            .map_err(|_| ResolveError::Failed("too many concurrent system lookups".into()))?;
        // The trailing dot makes the name absolute: the client's own stub
        // already applied its search list, and applying the host's as well
        // could map the name to an unrelated internal address.
        let absolute = format!("{name}.");
        // This is what tokio::net::lookup_host does, except that the permit
        // moves into the blocking task and so is held until getaddrinfo
        // really returns, even after we have stopped waiting for it.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            (absolute.as_str(), 0)
                .to_socket_addrs()
                .map(|found| found.map(|sa| sa.ip()).collect::<Vec<_>>())
        });
        match tokio::time::timeout(self.timeout, task).await {
            Err(_) => Err(ResolveError::Failed("system lookup timed out".into())),
            Ok(Err(join)) => Err(ResolveError::Failed(format!("lookup task: {join}"))),
            Ok(Ok(Err(err))) => Err(classify_lookup_error(&err)),
            Ok(Ok(Ok(addrs))) => {
                let addrs = dedup(addrs);
                if addrs.is_empty() {
                    Err(ResolveError::NotFound)
                } else {
                    Ok(addrs)
                }
            }
        }
    }
}

impl Resolve for HostsThenSystem {
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        // A hosts entry is authoritative, even if it lacks the family asked
        // for (as with glibc's files backend).
        if let Some(addrs) = self.hosts.lookup(name) {
            return Ok(addrs.to_vec());
        }
        self.system_lookup(name).await
    }
}

fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

/// Names worth handing to getaddrinfo: plain host names whose last label is
/// not numeric. Anything else would not exist in the DNS anyway, and
/// getaddrinfo would treat forms like "127.1" or "::1" as literals instead
/// of names, answering without any lookup.
fn is_resolvable_hostname(name: &str) -> bool {
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !numeric_tld
}

/// std reports getaddrinfo failures only as text (gai_strerror, in the C
/// locale since Rust never calls setlocale), so "no such name" has to be
/// recognised by message: glibc's EAI_NONAME / EAI_NODATA and musl's.
fn classify_lookup_error(err: &io::Error) -> ResolveError {
    const NOT_FOUND: [&str; 4] = [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
        "nodename nor servname provided",
    ];
    let message = err.to_string();
    if NOT_FOUND.iter().any(|m| message.contains(m)) {
        ResolveError::NotFound
    } else {
        ResolveError::Failed(message)
    }
}

/// Removes repeats, keeping the first occurrence's position.
fn dedup(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Answers every name with its synthetic addresses, one per family,
/// without asking anyone upstream; from the asking sandbox's own pool.
pub struct SyntheticAnswers(pub Arc<synthetic::SandboxPools>);

impl Resolve for SyntheticAnswers {
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        assign_both(&self.0.shared(), name)
    }

    async fn resolve_for(
        &self,
        client: SocketAddr,
        name: &str,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        let pool = self
            .0
            .for_client(client.ip())
            .map_err(|e| ResolveError::Failed(e.to_string()))?;
        assign_both(&pool, name)
    }
}

fn assign_both(pool: &synthetic::SyntheticPool, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let now = Instant::now();
    let v4 = pool.assign(name, synthetic::Family::V4, now);
    let v6 = pool.assign(name, synthetic::Family::V6, now);
    match (v4, v6) {
        (Ok(v4), Ok(v6)) => Ok(vec![v4, v6]),
        (Err(e), _) | (_, Err(e)) => Err(ResolveError::Failed(e.to_string())),
    }
}

/// Answers queries from a [`Resolve`]r: the synthetic pool in the agent,
/// fakes in tests.
pub struct DnsResponder<R: Resolve> {
    resolver: Arc<R>,
    ttl: Duration,
    in_flight: Arc<Semaphore>,
}

impl<R: Resolve> DnsResponder<R> {
    /// `ttl` is what clients are told to cache answers for.
    pub fn new(resolver: Arc<R>, ttl: Duration) -> Self {
        Self {
            resolver,
            ttl,
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
        }
    }

    /// Caps queries handled at once; further ones get SERVFAIL at once.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
        self
    }

    /// Answers queries on `socket` until receiving fails for good. Each query
    /// is handled on its own task so a slow upstream lookup delays only its
    /// own answer.
    pub async fn serve(self: Arc<Self>, socket: UdpSocket) -> io::Result<()> {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(err) if is_transient(&err) => {
                    debug!("dns: recv: {err}");
                    continue;
                }
                Err(err) => return Err(err),
            };
            let packet = buf.get(..len).unwrap_or_default().to_vec();
            match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => {
                    let this = Arc::clone(&self);
                    let socket = Arc::clone(&socket);
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Some(reply) = this.handle_packet(&packet, peer).await {
                            send_reply(&socket, &reply, peer).await;
                        }
                    });
                }
                Err(_) => {
                    debug!("dns: {peer}: too many queries in flight, SERVFAIL");
                    if let Some(reply) = overload_reply(&packet) {
                        send_reply(&socket, &reply, peer).await;
                    }
                }
            }
        }
    }

    /// The reply to one datagram, or `None` to drop it.
    pub async fn handle_packet(&self, packet: &[u8], client: SocketAddr) -> Option<Vec<u8>> {
        match wire::parse_query(packet) {
            Ok(query) => Some(self.answer(&query, client).await),
            Err(WireError::NotImplemented(opcode)) => {
                debug!("dns: opcode {opcode} not implemented");
                wire::build_bare_error(packet, Rcode::NotImp)
            }
            Err(err) => {
                debug!("dns: malformed query: {err}");
                wire::build_format_error(packet)
            }
        }
    }

    async fn answer(&self, query: &Query, client: SocketAddr) -> Vec<u8> {
        if query.qclass != wire::CLASS_IN {
            debug!("dns: {} class {} refused", query.name, query.qclass);
            return wire::build_error(query, Rcode::Refused);
        }
        match query.qtype {
            wire::TYPE_A | wire::TYPE_AAAA => {}
            wire::TYPE_AXFR | wire::TYPE_IXFR => {
                return wire::build_error(query, Rcode::NotImp);
            }
            // We only hand out addresses; every other type gets NODATA
            // without asking upstream, which also keeps MX/TXT/SRV (and
            // HTTPS records pointing elsewhere) from steering clients.
            _ => return wire::build_answer(query, &[], ttl_secs(self.ttl)),
        }
        match self.resolver.resolve_for(client, &query.name).await {
            Ok(addrs) => {
                let addrs = select_family(query.qtype, &addrs);
                debug!("dns: {} type {} -> {addrs:?}", query.name, query.qtype);
                wire::build_answer(query, &addrs, ttl_secs(self.ttl))
            }
            Err(ResolveError::NotFound) => {
                debug!("dns: {} -> NXDOMAIN", query.name);
                wire::build_error(query, Rcode::NxDomain)
            }
            Err(ResolveError::Failed(why)) => {
                debug!("dns: {} -> SERVFAIL: {why}", query.name);
                wire::build_error(query, Rcode::ServFail)
            }
        }
    }
}

/// The addresses of the family `qtype` asks for, without repeats.
fn select_family(qtype: u16, addrs: &[IpAddr]) -> Vec<IpAddr> {
    let wanted = |addr: &&IpAddr| match qtype {
        wire::TYPE_A => addr.is_ipv4(),
        wire::TYPE_AAAA => addr.is_ipv6(),
        _ => false,
    };
    dedup(addrs.iter().filter(wanted).copied().collect())
}

fn ttl_secs(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

/// What to send when no handler slot is free: SERVFAIL for a well-formed
/// query (so the client retries soon), otherwise what parsing would give.
fn overload_reply(packet: &[u8]) -> Option<Vec<u8>> {
    match wire::parse_query(packet) {
        Ok(query) => Some(wire::build_error(&query, Rcode::ServFail)),
        Err(WireError::NotImplemented(_)) => wire::build_bare_error(packet, Rcode::NotImp),
        Err(_) => wire::build_format_error(packet),
    }
}

/// Errors a UDP socket may report for one peer (e.g. an ICMP error from an
/// earlier send) that do not mean the socket itself is broken.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn send_reply(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    // Losing one reply is fine (the client retries); it must not stop serving.
    if let Err(err) = socket.send_to(reply, peer).await {
        debug!("dns: send to {peer}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::wire::{CLASS_CH, CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_HTTPS, TYPE_MX};
    use super::*;
    use std::collections::HashMap;

    fn test_client() -> SocketAddr {
        "127.0.0.1:5353".parse().unwrap()
    }
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    /// Resolves from a fixed map; names not in it do not exist.
    #[derive(Default)]
    struct FakeResolver {
        answers: HashMap<String, Result<Vec<IpAddr>, ResolveError>>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeResolver {
        fn with(mut self, name: &str, answer: Result<Vec<IpAddr>, ResolveError>) -> Self {
            self.answers.insert(name.to_string(), answer);
            self
        }
    }

    impl Resolve for FakeResolver {
        async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
            self.calls.lock().unwrap().push(name.to_string());
            self.answers
                .get(name)
                .cloned()
                .unwrap_or(Err(ResolveError::NotFound))
        }
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const V4_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    fn fake() -> FakeResolver {
        FakeResolver::default()
            .with("api.example.test", Ok(vec![V4, V6, V4_B, V4]))
            .with(
                "broken.test",
                Err(ResolveError::Failed("upstream down".into())),
            )
            .with("v6only.test", Ok(vec![V6]))
    }

    fn responder(resolver: FakeResolver) -> DnsResponder<FakeResolver> {
        DnsResponder::new(Arc::new(resolver), Duration::from_secs(30))
    }

    fn query(id: u16, name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [id, 0x0100, 1, 0, 0, 0] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&qclass.to_be_bytes());
        out
    }

    /// (id, rcode, answer count, answer rdata) of a reply to a query.
    fn decode(reply: &[u8], question_len: usize) -> (u16, u8, u16, Vec<Vec<u8>>) {
        let field = |i: usize| u16::from_be_bytes([reply[i], reply[i + 1]]);
        let ancount = field(6);
        let mut pos = 12 + question_len;
        let mut rdatas = Vec::new();
        for _ in 0..ancount {
            let rdlen = usize::from(field(pos + 10));
            rdatas.push(reply[pos + 12..pos + 12 + rdlen].to_vec());
            pos += 12 + rdlen;
        }
        (field(0), (field(2) & 0xf) as u8, ancount, rdatas)
    }

    async fn ask(
        responder: &DnsResponder<FakeResolver>,
        name: &str,
        qtype: u16,
    ) -> (u16, u8, u16, Vec<Vec<u8>>) {
        let packet = query(0x4242, name, qtype, CLASS_IN);
        let reply = responder
            .handle_packet(&packet, test_client())
            .await
            .expect("a reply");
        decode(&reply, packet.len() - 12)
    }

    fn octets(addr: IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }

    #[tokio::test]
    async fn answers_a_with_ipv4_only_deduplicated() {
        let r = responder(fake());
        let (id, rcode, count, rdatas) = ask(&r, "api.example.test", TYPE_A).await;
        assert_eq!((id, rcode, count), (0x4242, 0, 2));
        assert_eq!(rdatas, [octets(V4), octets(V4_B)]);
    }

    #[tokio::test]
    async fn answers_aaaa_with_ipv6_only() {
        let r = responder(fake());
        let (_, rcode, _, rdatas) = ask(&r, "api.example.test", TYPE_AAAA).await;
        assert_eq!(rcode, 0);
        assert_eq!(rdatas, [octets(V6)]);
    }

    #[tokio::test]
    async fn missing_family_is_nodata() {
        let r = responder(fake());
        let (_, rcode, count, _) = ask(&r, "v6only.test", TYPE_A).await;
        assert_eq!((rcode, count), (0, 0));
    }

    #[tokio::test]
    async fn not_found_is_nxdomain_and_failure_is_servfail() {
        let r = responder(fake());
        assert_eq!(ask(&r, "nope.test", TYPE_A).await.1, Rcode::NxDomain as u8);
        assert_eq!(
            ask(&r, "broken.test", TYPE_A).await.1,
            Rcode::ServFail as u8
        );
    }

    #[tokio::test]
    async fn other_types_get_nodata_without_resolving() {
        let resolver = Arc::new(fake());
        let r = DnsResponder::new(Arc::clone(&resolver), DEFAULT_TTL);
        for qtype in [TYPE_MX, TYPE_HTTPS, wire::TYPE_TXT] {
            let packet = query(1, "api.example.test", qtype, CLASS_IN);
            let reply = r.handle_packet(&packet, test_client()).await.unwrap();
            let (_, rcode, count, _) = decode(&reply, packet.len() - 12);
            assert_eq!((rcode, count), (0, 0), "qtype {qtype}");
        }
        assert!(resolver.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn garbage_gets_formerr_or_nothing() {
        let r = responder(fake());
        let garbage = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x41];
        let reply = r.handle_packet(&garbage, test_client()).await.unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[3] & 0xf, Rcode::FormErr as u8);
        assert_eq!(r.handle_packet(&[1, 2, 3], test_client()).await, None);
    }

    #[tokio::test]
    async fn other_class_refused_and_other_opcode_notimp() {
        let r = responder(fake());
        let reply = r
            .handle_packet(
                &query(1, "version.bind", wire::TYPE_TXT, CLASS_CH),
                test_client(),
            )
            .await
            .unwrap();
        assert_eq!(reply[3] & 0xf, Rcode::Refused as u8);

        let mut status = query(1, "a.test", TYPE_A, CLASS_IN);
        status[2] = 2 << 3;
        let reply = r.handle_packet(&status, test_client()).await.unwrap();
        assert_eq!(reply[3] & 0xf, Rcode::NotImp as u8);
    }

    #[test]
    fn overload_reply_is_servfail() {
        let packet = query(7, "a.test", TYPE_A, CLASS_IN);
        let reply = overload_reply(&packet).unwrap();
        assert_eq!(reply[3] & 0xf, Rcode::ServFail as u8);
        assert_eq!(overload_reply(&[0; 5]), None);
    }

    #[tokio::test]
    async fn serves_queries_over_udp() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let r = Arc::new(responder(fake()));
        let serving = tokio::spawn(Arc::clone(&r).serve(server));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let packet = query(0x5151, "api.example.test", TYPE_A, CLASS_IN);
        client.send_to(&packet, server_addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("reply within 5 s")
            .unwrap();
        assert_eq!(from, server_addr);
        let (id, rcode, count, _) = decode(&buf[..len], packet.len() - 12);
        assert_eq!((id, rcode, count), (0x5151, 0, 2));
        serving.abort();
    }

    #[tokio::test]
    async fn serve_answers_servfail_when_saturated() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let r = Arc::new(responder(fake()).with_max_in_flight(0));
        let serving = tokio::spawn(Arc::clone(&r).serve(server));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let packet = query(9, "api.example.test", TYPE_A, CLASS_IN);
        client.send_to(&packet, server_addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("reply within 5 s")
            .unwrap();
        assert_eq!(buf[..len][3] & 0xf, Rcode::ServFail as u8);
        serving.abort();
    }

    #[tokio::test]
    async fn hosts_table_answers_before_system() {
        let hosts = HostsTable::parse("10.9.8.7 internal.test\n");
        let resolver = HostsThenSystem::new(hosts);
        assert_eq!(
            resolver.resolve("internal.test").await,
            Ok(vec!["10.9.8.7".parse::<IpAddr>().unwrap()])
        );
    }

    #[tokio::test]
    async fn literals_and_odd_names_are_not_passed_to_getaddrinfo() {
        // With no permits any real lookup would fail, so NotFound proves
        // these names were turned away before reaching getaddrinfo.
        let resolver = HostsThenSystem::new(HostsTable::default()).with_max_system_lookups(0);
        for name in ["", "127.1", "10.0.0.1", "::1", r"a\.b", "a..b", "x.123"] {
            assert_eq!(
                resolver.resolve(name).await,
                Err(ResolveError::NotFound),
                "{name}"
            );
        }
        assert!(matches!(
            resolver.resolve("example.test").await,
            Err(ResolveError::Failed(_))
        ));
    }

    #[test]
    fn resolvable_hostnames() {
        for ok in [
            "localhost",
            "a-b.example.com",
            "_srv._tcp.example.org",
            "1.example",
        ] {
            assert!(is_resolvable_hostname(ok), "{ok}");
        }
        let long = ["a".repeat(63).as_str(); 4].join(".");
        for bad in ["", "1.2.3.4", "a b", "a.", &long, "x\\065"] {
            assert!(!is_resolvable_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn getaddrinfo_errors_are_classified_by_message() {
        let err = |m: &str| io::Error::other(format!("failed to lookup address information: {m}"));
        assert_eq!(
            classify_lookup_error(&err("Name or service not known")),
            ResolveError::NotFound
        );
        assert_eq!(
            classify_lookup_error(&err("No address associated with hostname")),
            ResolveError::NotFound
        );
        assert!(matches!(
            classify_lookup_error(&err("Temporary failure in name resolution")),
            ResolveError::Failed(m) if m.contains("Temporary failure")
        ));
    }

    #[test]
    fn ttl_saturates() {
        assert_eq!(ttl_secs(Duration::from_secs(30)), 30);
        assert_eq!(ttl_secs(Duration::MAX), u32::MAX);
    }
}
