//! DNS responder for sandboxed workloads.
//!
//! The kernel hooks redirect every UDP port-53 datagram a sandboxed process
//! sends to [`DnsResponder::serve`]. We answer A/AAAA queries ourselves
//! (configured hosts first, then the host's resolver) and remember which
//! names resolved to which addresses in a [`NameBook`], so the proxy can
//! later tell which names a connection's destination IP was looked up as.

pub mod hosts;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex, PoisonError};
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
/// Entries a [`NameBook`] holds before evicting the oldest.
pub const DEFAULT_NAME_BOOK_CAPACITY: usize = 65_536;
/// How much longer than the DNS TTL a name stays in the book: clients may
/// connect a little after their cached answer expires, and some runtimes
/// (the JVM, for one) cache beyond the TTL.
pub const DEFAULT_RECORD_GRACE: Duration = Duration::from_secs(120);
/// Longest retention the book accepts, so `Instant + ttl` cannot overflow.
const MAX_RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
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

/// Which names each IP address was handed out for, and until when.
///
/// Bounded: past `capacity` (name, address) entries the oldest recorded are
/// evicted, so a workload cannot exhaust memory by looking up many names.
pub struct NameBook {
    inner: Mutex<Book>,
}

struct Book {
    capacity: usize,
    by_ip: HashMap<IpAddr, HashMap<Arc<str>, Slot>>,
    len: usize,
    /// Recording order for eviction. Refreshing an entry queues it again and
    /// leaves a stale item behind, recognised by its outdated `seq`.
    order: VecDeque<(u64, IpAddr, Arc<str>)>,
    next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    expires: Instant,
    seq: u64,
}

impl Default for NameBook {
    fn default() -> Self {
        Self::new(DEFAULT_NAME_BOOK_CAPACITY)
    }
}

impl NameBook {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Book {
                capacity,
                by_ip: HashMap::new(),
                len: 0,
                order: VecDeque::new(),
                next_seq: 0,
            }),
        }
    }

    /// Records that `name` resolved to `addrs`, valid for `ttl` from now.
    pub fn record(&self, name: &str, addrs: &[IpAddr], ttl: Duration) {
        self.record_at(name, addrs, ttl, Instant::now());
    }

    /// [`Self::record`] with an explicit clock, for tests.
    pub fn record_at(&self, name: &str, addrs: &[IpAddr], ttl: Duration, now: Instant) {
        self.lock().record(name, addrs, ttl, now);
    }

    /// Names `ip` was handed out for that have not expired, sorted.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        self.names_for_at(ip, Instant::now())
    }

    /// [`Self::names_for`] with an explicit clock, for tests.
    pub fn names_for_at(&self, ip: IpAddr, now: Instant) -> Vec<String> {
        self.lock().names_for(ip, now)
    }

    /// Number of (name, address) entries held, expired ones included until
    /// they are evicted or pruned.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // Book operations do not panic, but if one ever did, its state is
        // still consistent enough to serve; do not take the agent down.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Book {
    fn record(&mut self, name: &str, addrs: &[IpAddr], ttl: Duration, now: Instant) {
        if self.capacity == 0 || addrs.is_empty() {
            return;
        }
        let expires = now.checked_add(ttl.min(MAX_RECORD_TTL)).unwrap_or(now);
        let name: Arc<str> = Arc::from(name);
        for &ip in addrs {
            let seq = self.next_seq;
            self.next_seq += 1;
            let names = self.by_ip.entry(ip).or_default();
            match names.get_mut(&name) {
                Some(slot) => {
                    // Keep the later expiry: an earlier answer may still be
                    // cached by the client.
                    slot.expires = slot.expires.max(expires);
                    slot.seq = seq;
                }
                None => {
                    names.insert(Arc::clone(&name), Slot { expires, seq });
                    self.len += 1;
                }
            }
            self.order.push_back((seq, ip, Arc::clone(&name)));
        }
        self.evict_over_capacity();
        self.compact_order();
    }

    fn names_for(&mut self, ip: IpAddr, now: Instant) -> Vec<String> {
        let Some(names) = self.by_ip.get_mut(&ip) else {
            return Vec::new();
        };
        // Drop expired entries while we are here; their queue items go stale.
        let before = names.len();
        names.retain(|_, slot| slot.expires > now);
        self.len -= before - names.len();
        let mut out: Vec<String> = names.keys().map(|name| name.to_string()).collect();
        if names.is_empty() {
            self.by_ip.remove(&ip);
        }
        out.sort_unstable();
        out
    }

    fn evict_over_capacity(&mut self) {
        while self.len > self.capacity {
            let Some((seq, ip, name)) = self.order.pop_front() else {
                break; // unreachable while len counts queued entries
            };
            self.remove_if_current(seq, ip, &name);
        }
    }

    fn remove_if_current(&mut self, seq: u64, ip: IpAddr, name: &str) {
        let Some(names) = self.by_ip.get_mut(&ip) else {
            return;
        };
        if names.get(name).is_some_and(|slot| slot.seq == seq) {
            names.remove(name);
            self.len -= 1;
            if names.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Drops stale queue items once they outnumber live entries, so repeated
    /// refreshes of the same names cannot grow the queue without bound.
    /// Amortised O(1) per record.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.capacity {
            return;
        }
        let by_ip = &self.by_ip;
        self.order.retain(|(seq, ip, name)| {
            by_ip
                .get(ip)
                .and_then(|names| names.get(name))
                .is_some_and(|slot| slot.seq == *seq)
        });
    }
}

/// Answers the DNS queries of sandboxed workloads.
pub struct DnsResponder<R: Resolve> {
    resolver: Arc<R>,
    names: Arc<NameBook>,
    ttl: Duration,
    record_ttl: Duration,
    in_flight: Arc<Semaphore>,
}

impl<R: Resolve> DnsResponder<R> {
    /// `ttl` is what clients are told to cache answers for; the name book
    /// keeps them [`DEFAULT_RECORD_GRACE`] longer.
    pub fn new(resolver: Arc<R>, names: Arc<NameBook>, ttl: Duration) -> Self {
        Self {
            resolver,
            names,
            ttl,
            record_ttl: ttl.saturating_add(DEFAULT_RECORD_GRACE),
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
        }
    }

    /// Caps queries handled at once; further ones get SERVFAIL at once.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
        self
    }

    /// How long answered names stay in the name book.
    pub fn with_record_ttl(mut self, record_ttl: Duration) -> Self {
        self.record_ttl = record_ttl;
        self
    }

    pub fn names(&self) -> &Arc<NameBook> {
        &self.names
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
                        if let Some(reply) = this.handle_packet(&packet).await {
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
    pub async fn handle_packet(&self, packet: &[u8]) -> Option<Vec<u8>> {
        match wire::parse_query(packet) {
            Ok(query) => Some(self.answer(&query).await),
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

    async fn answer(&self, query: &Query) -> Vec<u8> {
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
        match self.resolver.resolve(&query.name).await {
            Ok(addrs) => {
                let addrs = select_family(query.qtype, &addrs);
                self.names.record(&query.name, &addrs, self.record_ttl);
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
    use std::net::{Ipv4Addr, Ipv6Addr};

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
        DnsResponder::new(
            Arc::new(resolver),
            Arc::new(NameBook::default()),
            Duration::from_secs(30),
        )
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
        let reply = responder.handle_packet(&packet).await.expect("a reply");
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
        let r = DnsResponder::new(
            Arc::clone(&resolver),
            Arc::new(NameBook::default()),
            DEFAULT_TTL,
        );
        for qtype in [TYPE_MX, TYPE_HTTPS, wire::TYPE_TXT] {
            let packet = query(1, "api.example.test", qtype, CLASS_IN);
            let reply = r.handle_packet(&packet).await.unwrap();
            let (_, rcode, count, _) = decode(&reply, packet.len() - 12);
            assert_eq!((rcode, count), (0, 0), "qtype {qtype}");
        }
        assert!(resolver.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn garbage_gets_formerr_or_nothing() {
        let r = responder(fake());
        let garbage = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x41];
        let reply = r.handle_packet(&garbage).await.unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[3] & 0xf, Rcode::FormErr as u8);
        assert_eq!(r.handle_packet(&[1, 2, 3]).await, None);
    }

    #[tokio::test]
    async fn other_class_refused_and_other_opcode_notimp() {
        let r = responder(fake());
        let reply = r
            .handle_packet(&query(1, "version.bind", wire::TYPE_TXT, CLASS_CH))
            .await
            .unwrap();
        assert_eq!(reply[3] & 0xf, Rcode::Refused as u8);

        let mut status = query(1, "a.test", TYPE_A, CLASS_IN);
        status[2] = 2 << 3;
        let reply = r.handle_packet(&status).await.unwrap();
        assert_eq!(reply[3] & 0xf, Rcode::NotImp as u8);
    }

    #[tokio::test]
    async fn records_answered_names_in_the_book() {
        let r = responder(fake());
        ask(&r, "api.example.test", TYPE_A).await;
        ask(&r, "nope.test", TYPE_A).await;
        assert_eq!(r.names().names_for(V4), ["api.example.test"]);
        // Only the family that was answered is recorded.
        assert!(r.names().names_for(V6).is_empty());
        assert_eq!(r.names().len(), 2);
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
        assert_eq!(r.names().names_for(V4_B), ["api.example.test"]);
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
        assert!(r.names().is_empty());
        serving.abort();
    }

    #[test]
    fn name_book_expires_entries() {
        let book = NameBook::default();
        let t0 = Instant::now();
        book.record_at("a.test", &[V4], Duration::from_secs(10), t0);
        book.record_at("b.test", &[V4], Duration::from_secs(60), t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(book.names_for_at(V4, at(5)), ["a.test", "b.test"]);
        assert_eq!(book.names_for_at(V4, at(10)), ["b.test"]);
        assert_eq!(book.len(), 1, "expired entry pruned on read");
        assert!(book.names_for_at(V4, at(60)).is_empty());
        assert!(book.names_for_at(V6, at(0)).is_empty());
    }

    #[test]
    fn name_book_refresh_keeps_later_expiry() {
        let book = NameBook::default();
        let t0 = Instant::now();
        book.record_at("a.test", &[V4], Duration::from_secs(100), t0);
        book.record_at("a.test", &[V4], Duration::from_secs(10), t0);
        assert_eq!(book.len(), 1);
        assert_eq!(
            book.names_for_at(V4, t0 + Duration::from_secs(50)),
            ["a.test"]
        );
    }

    #[test]
    fn name_book_evicts_oldest_beyond_capacity() {
        let book = NameBook::new(3);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        book.record_at("old.test", &[V4], ttl, t0);
        book.record_at("mid.test", &[V4, V6], ttl, t0);
        // Refreshing makes old.test the newest again.
        book.record_at("old.test", &[V4], ttl, t0);
        book.record_at("new.test", &[V6], ttl, t0);
        assert_eq!(book.len(), 3);
        assert_eq!(book.names_for_at(V4, t0), ["old.test"]);
        assert_eq!(book.names_for_at(V6, t0), ["mid.test", "new.test"]);
    }

    #[test]
    fn name_book_stays_bounded_under_churn_and_refreshes() {
        let book = NameBook::new(100);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i % 300));
            book.record_at(&format!("n{}.test", i % 500), &[ip], ttl, t0);
            book.record_at("hot.test", &[V4], ttl, t0);
        }
        let inner = book.lock();
        assert!(inner.len <= 100);
        assert!(inner.order.len() <= 2 * 100 + 2);
        let counted: usize = inner.by_ip.values().map(HashMap::len).sum();
        assert_eq!(counted, inner.len);
    }

    #[test]
    fn name_book_survives_huge_ttl_and_zero_capacity() {
        let book = NameBook::default();
        book.record("forever.test", &[V4], Duration::MAX);
        assert_eq!(book.names_for(V4), ["forever.test"]);
        let none = NameBook::new(0);
        none.record("a.test", &[V4], DEFAULT_TTL);
        assert!(none.is_empty());
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
