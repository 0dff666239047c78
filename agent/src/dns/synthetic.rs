//! Synthetic DNS addresses.
//!
//! The DNS responder answers every A/AAAA query of a sandbox with an address
//! leased from a private pool instead of the name's real address. A later
//! connection to that address tells the proxy exactly which name the
//! workload meant, and the real upstream lookup happens only once policy has
//! allowed the connection, so queries alone cannot carry data out.
//!
//! One [`SyntheticPool`] per sandbox. A lease maps one name to one address
//! per family; it lives for the TTL we hand out, renewed by each lookup, and
//! the address stays bound to the name for a grace period after that (see
//! [`SyntheticPool::grace`]). An address is never handed to another name
//! while its lease or grace is running: a connection meant for name A would
//! otherwise be decided, and dialled, as name B.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

/// Default IPv4 pool. RFC 1918 space, so it is never a real internet
/// destination; a /16 gives 65,024 usable addresses. Not 100.64.0.0/10
/// (CGNAT, taken by Tailscale and carrier networks) nor 198.18.0.0/15
/// (benchmarking, taken by other fake-IP resolvers). A site whose own
/// networks use 10.200/16 must pick another pool: connections to pool
/// addresses are always treated as synthetic.
pub const DEFAULT_V4_POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 200, 0, 0), 16);
/// Default IPv6 pool: a unique local (fc00::/7) /64 whose global ID is
/// "portc" in ASCII (70 6f 72 74 63), so collisions with a site's own ULA
/// prefixes (random global IDs) are unlikely.
pub const DEFAULT_V6_POOL: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xfd70, 0x6f72, 0x7463, 0, 0, 0, 0, 0), 64);
/// Default TTL: the upper end of OpenShell's 1-30 s, short enough that
/// leases of names no longer looked up free their addresses soon.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default lease capacity, about one /16's worth.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longer TTLs would hold addresses (and pool space) long after use.
pub const MAX_TTL: Duration = Duration::from_secs(300);
pub const MIN_CAPACITY: usize = 16;
/// Bounds memory per sandbox even under a misconfiguration: at most
/// [`MAX_NAME_LEN`] bytes of name plus map overhead per lease.
pub const MAX_CAPACITY: usize = 1 << 20;
/// Smallest pools: a /24 (254 usable addresses) and a /120.
pub const MAX_V4_PREFIX_LEN: u8 = 24;
pub const MAX_V6_PREFIX_LEN: u8 = 120;
/// Longest name accepted, in presentation form. Plain DNS names fit in 253
/// characters; longer forms need escapes for odd bytes, which no real
/// service uses.
pub const MAX_NAME_LEN: usize = 253;
/// Shortest grace period, whatever the TTL: some runtimes cache answers
/// regardless of TTL (the JVM keeps them 30 s by default).
pub const MIN_GRACE: Duration = Duration::from_secs(30);

/// Address ranges a pool may be carved from: space that is never a public
/// internet destination, so a pool cannot shadow real services.
const PRIVATE_V4: [Ipv4Net; 5] = [
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
];
const UNIQUE_LOCAL_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7);

/// Address family of a query (A or AAAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every address of the family (or every lease slot) is held by a lease
    /// still alive or in grace; the responder answers SERVFAIL.
    #[error("no free synthetic {0} address: every lease is still alive")]
    Exhausted(Family),
    #[error("invalid synthetic address pool: {0}")]
    BadConfig(String),
    /// The name is empty, too long or not in presentation form. Carries a
    /// fixed reason, never the (untrusted) name itself.
    #[error("no synthetic address for this name: {0}")]
    BadName(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Must lie in private IPv4 space (RFC 1918, 100.64/10 or 198.18/15), be
    /// a /24 or larger, and have no host bits set.
    pub v4: Ipv4Net,
    /// Must lie in fc00::/7, be a /120 or larger, and have no host bits set.
    pub v6: Ipv6Net,
    /// TTL of the answers, and so the lifetime of a lease after its last
    /// lookup. 1-300 s.
    pub ttl: Duration,
    /// Most leases held at once, both families together.
    pub capacity: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            v4: DEFAULT_V4_POOL,
            v6: DEFAULT_V6_POOL,
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl PoolConfig {
    fn validate(&self) -> Result<(), PoolError> {
        let bad = |why: String| Err(PoolError::BadConfig(why));
        let (v4, v6) = (self.v4, self.v6);
        if v4.prefix_len() > MAX_V4_PREFIX_LEN {
            return bad(format!(
                "IPv4 pool {v4} is smaller than a /{MAX_V4_PREFIX_LEN}"
            ));
        }
        if v4.addr() != v4.network() {
            return bad(format!("IPv4 pool {v4} has host bits set"));
        }
        if !PRIVATE_V4.iter().any(|private| private.contains(&v4)) {
            return bad(format!(
                "IPv4 pool {v4} is not private address space and would shadow real destinations"
            ));
        }
        if v6.prefix_len() > MAX_V6_PREFIX_LEN {
            return bad(format!(
                "IPv6 pool {v6} is smaller than a /{MAX_V6_PREFIX_LEN}"
            ));
        }
        if v6.addr() != v6.network() {
            return bad(format!("IPv6 pool {v6} has host bits set"));
        }
        if !UNIQUE_LOCAL_V6.contains(&v6) {
            return bad(format!(
                "IPv6 pool {v6} is outside {UNIQUE_LOCAL_V6} and would shadow real destinations"
            ));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return bad(format!(
                "TTL {:?} is outside {MIN_TTL:?}..={MAX_TTL:?}",
                self.ttl
            ));
        }
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&self.capacity) {
            return bad(format!(
                "capacity {} is outside {MIN_CAPACITY}..={MAX_CAPACITY}",
                self.capacity
            ));
        }
        Ok(())
    }
}

/// Synthetic addresses leased to names, for one sandbox. Shared between the
/// DNS responder and the proxy through an `Arc`.
pub struct SyntheticPool {
    config: PoolConfig,
    grace: Duration,
    v4_space: Space,
    v6_space: Space,
    /// Keyed per pool, so where a name lands cannot be predicted from
    /// outside, yet stays the same for the pool's lifetime.
    hasher: RandomState,
    state: Mutex<State>,
}

impl SyntheticPool {
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        // MAX_TTL is small, so this cannot overflow.
        let grace = config.ttl.saturating_mul(2).max(MIN_GRACE);
        Ok(Self {
            v4_space: Space::v4(config.v4),
            v6_space: Space::v6(config.v6),
            grace,
            config,
            hasher: RandomState::new(),
            state: Mutex::new(State::default()),
        })
    }

    /// The address for `name` in `family`, leasing one if the name has none.
    /// The same name keeps the same address while its lease is alive (or in
    /// grace), and each call renews the lease to `now + ttl`.
    ///
    /// `name` is a presentation-form DNS name; it is lowercased and a final
    /// root dot dropped, so "Example.COM." and "example.com" share a lease.
    pub fn assign(&self, name: &str, family: Family, now: Instant) -> Result<IpAddr, PoolError> {
        let name = canonical_name(name)?;
        let mut state = self.lock();
        match family {
            Family::V4 => self
                .assign_in::<Ipv4Addr>(&mut state, &name, now)
                .map(IpAddr::V4),
            Family::V6 => self
                .assign_in::<Ipv6Addr>(&mut state, &name, now)
                .map(IpAddr::V6),
        }
    }

    /// The name `ip` is leased to, while the lease is alive or in grace.
    ///
    /// The grace period exists because clients connect after their cached
    /// answer expires: a lookup just before expiry followed by a slow
    /// connect, happy-eyeballs fallbacks, retries, and runtimes that cache
    /// beyond the TTL. The address is not reused during grace, so answering
    /// then is still exact. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn name_for(&self, ip: IpAddr, now: Instant) -> Option<String> {
        let ip = ip.to_canonical();
        if !self.contains(ip) {
            return None;
        }
        let state = self.lock();
        let lease = state.leases.get(&ip)?;
        self.is_alive(lease, now).then(|| lease.name.to_string())
    }

    /// Whether `ip` lies in the pool's prefixes at all, leased or not. The
    /// proxy treats every such destination as synthetic: one without a live
    /// lease names nothing and must be denied. IPv4-mapped IPv6 addresses
    /// count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.config.v4.contains(&v4),
            IpAddr::V6(v6) => self.config.v6.contains(&v6),
        }
    }

    /// TTL to put in answers.
    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// How long after its lease expires an address still maps to its name
    /// and stays out of reuse: twice the TTL, at least [`MIN_GRACE`].
    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Leases held, reserved and expired-but-not-yet-reused ones included.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A permanent lease in both families for `name` (e.g. `policy.local`),
    /// never expired or evicted. Idempotent; a name already leased keeps its
    /// addresses. Takes two lease slots; fails as a whole if either family
    /// has no free address.
    pub fn reserve(&self, name: &str) -> Result<(Ipv4Addr, Ipv6Addr), PoolError> {
        let name = canonical_name(name)?;
        // Only used to find leases dead enough to evict.
        let now = Instant::now();
        let mut state = self.lock();
        let (v4, undo_v4) = self.reserve_in::<Ipv4Addr>(&mut state, &name, now)?;
        match self.reserve_in::<Ipv6Addr>(&mut state, &name, now) {
            Ok((v6, _)) => Ok((v4, v6)),
            Err(err) => {
                // Leave the pool as it was: no half reservation.
                match undo_v4 {
                    Undo::Created => state.remove(IpAddr::V4(v4)),
                    Undo::Restore(expires) => state.set_expiry(IpAddr::V4(v4), expires),
                }
                Err(err)
            }
        }
    }

    fn assign_in<A: PoolAddr>(
        &self,
        state: &mut State,
        name: &str,
        now: Instant,
    ) -> Result<A, PoolError> {
        let expires = now.checked_add(self.config.ttl).unwrap_or(now);
        if let Some(&addr) = A::names(state).get(name) {
            state.renew(addr.into(), expires);
            return Ok(addr);
        }
        let addr = self.allocate::<A>(state, name, now)?;
        state.insert(addr, Arc::from(name), Some(expires));
        Ok(addr)
    }

    fn reserve_in<A: PoolAddr>(
        &self,
        state: &mut State,
        name: &str,
        now: Instant,
    ) -> Result<(A, Undo), PoolError> {
        if let Some(&addr) = A::names(state).get(name) {
            let ip = addr.into();
            let previous = state.leases.get(&ip).and_then(|lease| lease.expires);
            state.set_expiry(ip, None);
            return Ok((addr, Undo::Restore(previous)));
        }
        let addr = self.allocate::<A>(state, name, now)?;
        state.insert(addr, Arc::from(name), None);
        Ok((addr, Undo::Created))
    }

    /// A free address for `name`. The caller inserts the lease, so on
    /// success there is room for one more.
    fn allocate<A: PoolAddr>(
        &self,
        state: &mut State,
        name: &str,
        now: Instant,
    ) -> Result<A, PoolError> {
        let family = A::FAMILY;
        let space = self.space(family);
        let exhausted = PoolError::Exhausted(family);
        if A::names(state).len() as u128 >= space.usable {
            // Every address of the family is leased: recycle the one whose
            // lease died longest ago, if any has.
            let victim = state
                .oldest_dead(family, now, self.grace)
                .ok_or(exhausted.clone())?;
            state.recycle(victim);
            return A::from_ip(victim).ok_or(exhausted);
        }
        if state.leases.len() >= self.config.capacity {
            let victim = state
                .oldest_dead(Family::V4, now, self.grace)
                .into_iter()
                .chain(state.oldest_dead(Family::V6, now, self.grace))
                .min_by_key(|ip| state.leases.get(ip).and_then(|lease| lease.expires))
                .ok_or(exhausted.clone())?;
            state.recycle(victim);
        }
        // Fewer leases than usable addresses, so a never-leased (or evicted)
        // one exists. Prefer those over recycling dead leases: the longer an
        // address rests, the less likely a stale client cache still holds it.
        self.probe::<A>(state, self.start_offset(family, name))
            .ok_or(exhausted)
    }

    /// The first free, usable address at or after `start` (wrapping). Runs
    /// at most a little past the number of leases held before finding one.
    fn probe<A: PoolAddr>(&self, state: &State, start: u128) -> Option<A> {
        let space = self.space(A::FAMILY);
        let mut offset = start % space.size;
        let mut steps: u128 = 0;
        while steps < space.size {
            if !space.skips(offset)
                && let Some(addr) = A::from_bits(space.base | offset)
                && !state.leases.contains_key(&addr.into())
            {
                return Some(addr);
            }
            offset = if offset + 1 == space.size {
                0
            } else {
                offset + 1
            };
            steps += 1;
        }
        None
    }

    fn start_offset(&self, family: Family, name: &str) -> u128 {
        let high = self.hasher.hash_one((0u8, name));
        let low = self.hasher.hash_one((1u8, name));
        ((u128::from(high) << 64) | u128::from(low)) % self.space(family).size
    }

    fn space(&self, family: Family) -> &Space {
        match family {
            Family::V4 => &self.v4_space,
            Family::V6 => &self.v6_space,
        }
    }

    fn is_alive(&self, lease: &Lease, now: Instant) -> bool {
        is_alive(lease.expires, now, self.grace)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State operations do not panic; if one ever did, the maps are
        // still usable and the agent must keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Alive or in grace: not yet reusable for another name. Permanent leases
/// (`None`) always are.
fn is_alive(expires: Option<Instant>, now: Instant, grace: Duration) -> bool {
    expires.is_none_or(|expires| expires.checked_add(grace).is_none_or(|end| now < end))
}

/// Lowercases and drops a final root dot (unless escaped, as in `a\.`).
fn canonical_name(name: &str) -> Result<Cow<'_, str>, PoolError> {
    let name = match name.strip_suffix('.') {
        Some(stem) if stem.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 0 => stem,
        _ => name,
    };
    if name.is_empty() {
        return Err(PoolError::BadName("empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PoolError::BadName("name too long"));
    }
    // Presentation form escapes everything else (wire::Query::name).
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PoolError::BadName("name is not printable ASCII"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

/// What [`SyntheticPool::reserve`] undoes for the first family if the
/// second fails.
enum Undo {
    Created,
    Restore(Option<Instant>),
}

/// One family's prefix, as offsets from its base address.
#[derive(Debug, Clone, Copy)]
struct Space {
    base: u128,
    /// Number of addresses; a power of two, at least 256.
    size: u128,
    /// Addresses we hand out (size minus the ones we skip).
    usable: u128,
    v4: bool,
}

impl Space {
    fn v4(net: Ipv4Net) -> Self {
        let size = 1u128 << (32 - u32::from(net.prefix_len()));
        Self {
            base: u128::from(net.network().to_bits()),
            size,
            // Two of every 256 are skipped; prefixes are /24 or larger.
            usable: size / 256 * 254,
            v4: true,
        }
    }

    fn v6(net: Ipv6Net) -> Self {
        let size = 1u128 << (128 - u32::from(net.prefix_len()));
        Self {
            base: net.network().to_bits(),
            size,
            usable: size - 1,
            v4: false,
        }
    }

    /// IPv4 addresses ending in .0 or .255 look like network or broadcast
    /// addresses and confuse some tools; in IPv6 the all-zero interface ID
    /// is the subnet-router anycast address. Bases are aligned to at least
    /// 256, so the offset's low byte is the address's.
    fn skips(&self, offset: u128) -> bool {
        let low = offset & 0xff;
        if self.v4 {
            low == 0 || low == 0xff
        } else {
            offset == 0
        }
    }
}

/// The two address types, so one generic path serves both families and
/// each hands back its own type without runtime checks.
trait PoolAddr: Copy + Eq + Hash + Into<IpAddr> {
    const FAMILY: Family;
    fn from_bits(bits: u128) -> Option<Self>;
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn names(state: &State) -> &HashMap<Arc<str>, Self>;
    fn names_mut(state: &mut State) -> &mut HashMap<Arc<str>, Self>;
}

impl PoolAddr for Ipv4Addr {
    const FAMILY: Family = Family::V4;
    fn from_bits(bits: u128) -> Option<Self> {
        u32::try_from(bits).ok().map(Ipv4Addr::from_bits)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }
    fn names(state: &State) -> &HashMap<Arc<str>, Self> {
        &state.v4_names
    }
    fn names_mut(state: &mut State) -> &mut HashMap<Arc<str>, Self> {
        &mut state.v4_names
    }
}

impl PoolAddr for Ipv6Addr {
    const FAMILY: Family = Family::V6;
    fn from_bits(bits: u128) -> Option<Self> {
        Some(Ipv6Addr::from_bits(bits))
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }
    fn names(state: &State) -> &HashMap<Arc<str>, Self> {
        &state.v6_names
    }
    fn names_mut(state: &mut State) -> &mut HashMap<Arc<str>, Self> {
        &mut state.v6_names
    }
}

struct Lease {
    name: Arc<str>,
    /// End of the lease proper (grace comes on top); `None` if reserved.
    expires: Option<Instant>,
}

/// Invariants: `leases` holds exactly the addresses in `v4_names` and
/// `v6_names` (one lease per name and family), and each expiry index holds
/// `(expires, ip)` for exactly that family's non-reserved leases.
#[derive(Default)]
struct State {
    leases: HashMap<IpAddr, Lease>,
    v4_names: HashMap<Arc<str>, Ipv4Addr>,
    v6_names: HashMap<Arc<str>, Ipv6Addr>,
    v4_expiries: BTreeSet<(Instant, IpAddr)>,
    v6_expiries: BTreeSet<(Instant, IpAddr)>,
}

impl State {
    fn expiries(&mut self, family: Family) -> &mut BTreeSet<(Instant, IpAddr)> {
        match family {
            Family::V4 => &mut self.v4_expiries,
            Family::V6 => &mut self.v6_expiries,
        }
    }

    fn insert<A: PoolAddr>(&mut self, addr: A, name: Arc<str>, expires: Option<Instant>) {
        let ip = addr.into();
        A::names_mut(self).insert(Arc::clone(&name), addr);
        self.leases.insert(ip, Lease { name, expires });
        if let Some(expires) = expires {
            self.expiries(A::FAMILY).insert((expires, ip));
        }
    }

    fn remove(&mut self, ip: IpAddr) {
        let Some(lease) = self.leases.remove(&ip) else {
            return;
        };
        match ip {
            IpAddr::V4(_) => {
                self.v4_names.remove(&lease.name);
            }
            IpAddr::V6(_) => {
                self.v6_names.remove(&lease.name);
            }
        }
        if let Some(expires) = lease.expires {
            self.expiries(Family::of(ip)).remove(&(expires, ip));
        }
    }

    /// Evicts a dead lease to make room.
    fn recycle(&mut self, ip: IpAddr) {
        if let Some(lease) = self.leases.get(&ip) {
            log::debug!(
                "synthetic dns: recycling {ip}, last leased to {}",
                lease.name
            );
        }
        self.remove(ip);
    }

    /// Extends a lease to `expires`. Never shortens one: a caller holding an
    /// older `now` may get the lock after a newer one.
    fn renew(&mut self, ip: IpAddr, expires: Instant) {
        if let Some(lease) = self.leases.get(&ip)
            && let Some(current) = lease.expires
            && expires > current
        {
            self.set_expiry(ip, Some(expires));
        }
    }

    fn set_expiry(&mut self, ip: IpAddr, expires: Option<Instant>) {
        let Some(lease) = self.leases.get_mut(&ip) else {
            return;
        };
        let previous = std::mem::replace(&mut lease.expires, expires);
        let index = self.expiries(Family::of(ip));
        if let Some(previous) = previous {
            index.remove(&(previous, ip));
        }
        if let Some(expires) = expires {
            index.insert((expires, ip));
        }
    }

    /// The family's lease that expired first, if it is past its grace.
    fn oldest_dead(&self, family: Family, now: Instant, grace: Duration) -> Option<IpAddr> {
        let index = match family {
            Family::V4 => &self.v4_expiries,
            Family::V6 => &self.v6_expiries,
        };
        let &(expires, ip) = index.first()?;
        (!is_alive(Some(expires), now, grace)).then_some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn pool() -> SyntheticPool {
        SyntheticPool::new(PoolConfig::default()).unwrap()
    }

    /// A /24 and a /120: 254 and 255 usable addresses.
    fn tiny(capacity: usize) -> SyntheticPool {
        SyntheticPool::new(PoolConfig {
            v4: "10.200.7.0/24".parse().unwrap(),
            v6: "fd70:6f72:7463::/120".parse().unwrap(),
            ttl: Duration::from_secs(10),
            capacity,
        })
        .unwrap()
    }

    fn name(i: usize) -> String {
        format!("host-{i}.example.test")
    }

    /// Checks the invariants documented on `State`.
    fn assert_consistent(pool: &SyntheticPool) {
        let state = pool.lock();
        assert_eq!(
            state.leases.len(),
            state.v4_names.len() + state.v6_names.len()
        );
        assert!(state.leases.len() <= pool.config.capacity);
        for (name, &addr) in &state.v4_names {
            assert_eq!(&state.leases[&IpAddr::V4(addr)].name, name);
        }
        for (name, &addr) in &state.v6_names {
            assert_eq!(&state.leases[&IpAddr::V6(addr)].name, name);
        }
        let mut indexed = 0;
        for (ip, lease) in &state.leases {
            assert!(pool.contains(*ip));
            if let Some(expires) = lease.expires {
                let index = match ip {
                    IpAddr::V4(_) => &state.v4_expiries,
                    IpAddr::V6(_) => &state.v6_expiries,
                };
                assert!(index.contains(&(expires, *ip)));
                indexed += 1;
            }
        }
        assert_eq!(state.v4_expiries.len() + state.v6_expiries.len(), indexed);
    }

    #[test]
    fn default_config_is_valid() {
        let pool = pool();
        assert_eq!(pool.ttl(), Duration::from_secs(30));
        assert_eq!(pool.grace(), Duration::from_secs(60));
        assert_eq!(pool.config().v4.to_string(), "10.200.0.0/16");
        assert_eq!(pool.config().v6.to_string(), "fd70:6f72:7463::/64");
        assert!(pool.is_empty());
    }

    #[test]
    fn same_name_same_address_within_ttl() {
        let pool = pool();
        let t0 = Instant::now();
        let a4 = pool.assign("api.example.test", Family::V4, t0).unwrap();
        let a6 = pool.assign("api.example.test", Family::V6, t0).unwrap();
        assert!(a4.is_ipv4() && pool.contains(a4));
        assert!(a6.is_ipv6() && pool.contains(a6));
        assert_eq!(
            pool.assign("api.example.test", Family::V4, t0 + 29 * SECOND),
            Ok(a4)
        );
        assert_eq!(
            pool.assign("API.Example.Test.", Family::V6, t0 + 29 * SECOND),
            Ok(a6)
        );
        let other = pool.assign("other.example.test", Family::V4, t0).unwrap();
        assert_ne!(other, a4);
        assert_eq!(pool.name_for(a4, t0).as_deref(), Some("api.example.test"));
        assert_eq!(pool.name_for(a6, t0).as_deref(), Some("api.example.test"));
        assert_eq!(pool.len(), 3);
        assert_consistent(&pool);
    }

    #[test]
    fn lookup_renews_the_lease() {
        let pool = tiny(16);
        let (ttl, grace) = (pool.ttl(), pool.grace());
        let t0 = Instant::now();
        let ip = pool.assign("a.test", Family::V4, t0).unwrap();
        let t1 = t0 + ttl - SECOND;
        assert_eq!(pool.assign("a.test", Family::V4, t1), Ok(ip));
        // Alive until t1 + ttl + grace, which is past the first lease's end.
        let end = t1 + ttl + grace;
        assert_eq!(pool.name_for(ip, end - SECOND).as_deref(), Some("a.test"));
        assert_eq!(pool.name_for(ip, end), None);
        // An earlier `now` arriving late does not shorten the lease.
        assert_eq!(pool.assign("a.test", Family::V4, t0), Ok(ip));
        assert_eq!(pool.name_for(ip, end - SECOND).as_deref(), Some("a.test"));
        assert_consistent(&pool);
    }

    #[test]
    fn name_for_honours_grace_after_expiry() {
        let pool = pool();
        let t0 = Instant::now();
        let ip = pool.assign("a.test", Family::V6, t0).unwrap();
        let expiry = t0 + pool.ttl();
        let grace_end = expiry + pool.grace();
        assert_eq!(
            pool.name_for(ip, expiry - SECOND).as_deref(),
            Some("a.test")
        );
        assert_eq!(pool.name_for(ip, expiry).as_deref(), Some("a.test"));
        assert_eq!(
            pool.name_for(ip, grace_end - SECOND).as_deref(),
            Some("a.test")
        );
        assert_eq!(pool.name_for(ip, grace_end), None);
        // Same name again after grace: the address was not reused, so the
        // name gets it back.
        assert_eq!(pool.assign("a.test", Family::V6, grace_end), Ok(ip));
        assert_eq!(pool.name_for(ip, grace_end).as_deref(), Some("a.test"));
    }

    #[test]
    fn grace_has_a_floor() {
        let pool = SyntheticPool::new(PoolConfig {
            ttl: SECOND,
            ..PoolConfig::default()
        })
        .unwrap();
        assert_eq!(pool.grace(), MIN_GRACE);
    }

    #[test]
    fn full_pool_never_reuses_a_live_address() {
        let pool = tiny(16);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for i in 0..16 {
            held.push(pool.assign(&name(i), Family::V4, t0).unwrap());
        }
        let dead = t0 + pool.ttl() + pool.grace();
        // Alive, then in grace: nothing may be taken.
        for at in [t0, t0 + pool.ttl(), dead - SECOND] {
            assert_eq!(
                pool.assign("new.test", Family::V4, at),
                Err(PoolError::Exhausted(Family::V4))
            );
            assert_eq!(
                pool.assign("new.test", Family::V6, at),
                Err(PoolError::Exhausted(Family::V6))
            );
        }
        for (i, &ip) in held.iter().enumerate() {
            assert_eq!(pool.name_for(ip, dead - SECOND), Some(name(i)));
        }
        // Once past grace a lease can go, and only then.
        let ip = pool.assign("new.test", Family::V4, dead).unwrap();
        assert_eq!(pool.name_for(ip, dead).as_deref(), Some("new.test"));
        assert_eq!(pool.len(), 16);
        assert_consistent(&pool);
    }

    #[test]
    fn eviction_takes_the_lease_that_expired_first() {
        let pool = tiny(16);
        let t0 = Instant::now();
        for i in 0..16 {
            pool.assign(&name(i), Family::V4, t0 + i as u32 * SECOND)
                .unwrap();
        }
        // host-0 renewed last, so host-1 is now the oldest.
        let renewed_at = t0 + 20 * SECOND;
        let first = pool.assign(&name(0), Family::V4, renewed_at).unwrap();
        let second = pool.assign(&name(1), Family::V4, t0).unwrap();
        let later = renewed_at + pool.ttl() + pool.grace();
        pool.assign("new.test", Family::V4, later).unwrap();
        assert_eq!(pool.name_for(first, later - SECOND), Some(name(0)));
        // Evicted: gone, or by chance re-leased to the new name.
        assert_ne!(pool.name_for(second, later), Some(name(1)));
        assert_eq!(pool.assign(&name(0), Family::V4, later), Ok(first));
        assert_consistent(&pool);
    }

    #[test]
    fn full_family_recycles_only_dead_addresses() {
        // Capacity beyond the /24, so the family fills before the table.
        let pool = tiny(1000);
        let t0 = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for i in 0..254 {
            let ip = pool.assign(&name(i), Family::V4, t0).unwrap();
            let IpAddr::V4(v4) = ip else {
                panic!("{ip} is not IPv4")
            };
            assert!(!matches!(v4.octets()[3], 0 | 255), "{v4}");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(
            pool.assign("one-more.test", Family::V4, t0),
            Err(PoolError::Exhausted(Family::V4))
        );
        // The other family is unaffected.
        assert!(pool.assign("one-more.test", Family::V6, t0).is_ok());
        let dead = t0 + pool.ttl() + pool.grace();
        let ip = pool.assign("one-more.test", Family::V4, dead).unwrap();
        assert!(seen.contains(&ip), "recycled from the full /24");
        assert_eq!(pool.name_for(ip, dead).as_deref(), Some("one-more.test"));
        assert_consistent(&pool);
    }

    #[test]
    fn fills_a_v6_pool_too() {
        let pool = tiny(1000);
        let t0 = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for i in 0..255 {
            let ip = pool.assign(&name(i), Family::V6, t0).unwrap();
            assert_ne!(ip, "fd70:6f72:7463::".parse::<IpAddr>().unwrap());
            assert!(seen.insert(ip));
        }
        assert_eq!(
            pool.assign("x.test", Family::V6, t0),
            Err(PoolError::Exhausted(Family::V6))
        );
        assert_consistent(&pool);
    }

    #[test]
    fn reserved_names_are_never_evicted() {
        let pool = tiny(16);
        let t0 = Instant::now();
        let (v4, v6) = pool.reserve("policy.local").unwrap();
        assert_eq!(pool.reserve("Policy.Local."), Ok((v4, v6)));
        assert_eq!(
            pool.assign("policy.local", Family::V4, t0),
            Ok(IpAddr::V4(v4))
        );
        for i in 0..14 {
            pool.assign(&name(i), Family::V4, t0).unwrap();
        }
        let much_later = t0 + Duration::from_secs(365 * 24 * 3600);
        // Only the 14 ordinary leases can make way.
        for i in 14..28 {
            pool.assign(&name(i), Family::V4, much_later).unwrap();
        }
        assert_eq!(
            pool.assign("x.test", Family::V4, much_later),
            Err(PoolError::Exhausted(Family::V4))
        );
        for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
            assert_eq!(
                pool.name_for(ip, much_later).as_deref(),
                Some("policy.local")
            );
        }
        assert_consistent(&pool);
    }

    #[test]
    fn reserve_keeps_an_existing_lease_address() {
        let pool = pool();
        let t0 = Instant::now();
        let ip = pool.assign("policy.local", Family::V6, t0).unwrap();
        let (_, v6) = pool.reserve("policy.local").unwrap();
        assert_eq!(IpAddr::V6(v6), ip);
        let never = t0 + Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(pool.name_for(ip, never).as_deref(), Some("policy.local"));
        assert_consistent(&pool);
    }

    #[test]
    fn failed_reserve_leaves_no_half_reservation() {
        let pool = tiny(1000);
        let t0 = Instant::now();
        for i in 0..255 {
            pool.assign(&name(i), Family::V6, t0).unwrap();
        }
        let before = pool.len();
        assert_eq!(
            pool.reserve("policy.local"),
            Err(PoolError::Exhausted(Family::V6))
        );
        assert_eq!(pool.len(), before);
        // A lease that existed keeps its expiry.
        let ip = pool.assign("kept.test", Family::V4, t0).unwrap();
        assert!(pool.reserve("kept.test").is_err());
        let dead = t0 + pool.ttl() + pool.grace();
        assert_eq!(pool.name_for(ip, dead), None);
        assert_consistent(&pool);
    }

    #[test]
    fn contains_covers_both_prefixes_and_mapped_v4() {
        let pool = pool();
        for inside in [
            "10.200.0.0",
            "10.200.255.255",
            "fd70:6f72:7463::1",
            "::ffff:10.200.1.2",
        ] {
            assert!(pool.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["10.201.0.1", "192.0.2.1", "fd70:6f72:7464::1", "::1"] {
            assert!(!pool.contains(outside.parse().unwrap()), "{outside}");
        }
    }

    #[test]
    fn name_for_unknown_or_foreign_addresses_is_none() {
        let pool = pool();
        let t0 = Instant::now();
        let IpAddr::V4(v4) = pool.assign("a.test", Family::V4, t0).unwrap() else {
            panic!("not IPv4")
        };
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(pool.name_for(mapped, t0).as_deref(), Some("a.test"));
        assert_eq!(pool.name_for("10.200.0.1".parse().unwrap(), t0), None);
        assert_eq!(pool.name_for("192.0.2.1".parse().unwrap(), t0), None);
    }

    #[test]
    fn rejects_bad_configs() {
        type Edit = fn(&mut PoolConfig);
        let with = |edit: Edit| {
            let mut config = PoolConfig::default();
            edit(&mut config);
            SyntheticPool::new(config).err()
        };
        let cases: [(Edit, &str); 10] = [
            (|c| c.v4 = "10.200.0.0/25".parse().unwrap(), "smaller"),
            (|c| c.v4 = "10.200.0.1/16".parse().unwrap(), "host bits"),
            (|c| c.v4 = "192.0.2.0/24".parse().unwrap(), "not private"),
            (|c| c.v4 = "0.0.0.0/0".parse().unwrap(), "not private"),
            (|c| c.v6 = "fd70::/121".parse().unwrap(), "smaller"),
            (|c| c.v6 = "2001:db8::/64".parse().unwrap(), "outside"),
            (|c| c.ttl = Duration::ZERO, "TTL"),
            (|c| c.ttl = MAX_TTL + SECOND, "TTL"),
            (|c| c.capacity = MIN_CAPACITY - 1, "capacity"),
            (|c| c.capacity = MAX_CAPACITY + 1, "capacity"),
        ];
        for (edit, expected) in cases {
            match with(edit) {
                Some(PoolError::BadConfig(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("expected BadConfig({expected}), got {other:?}"),
            }
        }
        assert!(with(|c| c.v4 = "172.16.0.0/12".parse().unwrap()).is_none());
        assert!(with(|c| c.v6 = "fc00::/7".parse().unwrap()).is_none());
    }

    #[test]
    fn names_are_canonicalised_or_rejected() {
        let pool = pool();
        let t0 = Instant::now();
        let ip = pool.assign("Example.COM.", Family::V4, t0).unwrap();
        assert_eq!(pool.name_for(ip, t0).as_deref(), Some("example.com"));
        // An escaped final dot is part of the label, not the root.
        let escaped = pool.assign(r"a\.", Family::V4, t0).unwrap();
        assert_eq!(pool.name_for(escaped, t0).as_deref(), Some(r"a\."));
        let escaped_backslash = pool.assign(r"a\\.", Family::V4, t0).unwrap();
        assert_eq!(
            pool.name_for(escaped_backslash, t0).as_deref(),
            Some(r"a\\")
        );
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", ".", "a b", "tab\t", "caf\u{e9}", long.as_str()] {
            assert!(
                matches!(pool.assign(bad, Family::V4, t0), Err(PoolError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(pool.reserve(""), Err(PoolError::BadName(_))));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn stays_consistent_and_bounded_under_churn() {
        let pool = tiny(64);
        let t0 = Instant::now();
        pool.reserve("policy.local").unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut live: HashMap<IpAddr, (String, Instant)> = HashMap::new();
        let (mut exhausted, mut reused) = (0, 0);
        for step in 0..20_000u32 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let now = t0 + Duration::from_millis(u64::from(step) * 50);
            let n = usize::try_from(seed >> 40).unwrap() % 300;
            let family = if seed & 1 == 0 {
                Family::V4
            } else {
                Family::V6
            };
            match pool.assign(&name(n), family, now) {
                Ok(ip) => {
                    // Never handed to a new name while a lease is alive.
                    if let Some((owner, until)) = live.get(&ip) {
                        reused += usize::from(owner != &name(n));
                        assert!(
                            owner == &name(n) || now >= *until,
                            "{ip} reused for {} while {owner} alive",
                            name(n)
                        );
                    }
                    live.insert(ip, (name(n), now + pool.ttl() + pool.grace()));
                }
                Err(err) => {
                    assert!(matches!(err, PoolError::Exhausted(_)));
                    exhausted += 1;
                }
            }
        }
        // Both pressure paths were exercised.
        assert!(exhausted > 0 && reused > 0, "{exhausted} {reused}");
        assert_consistent(&pool);
    }

    #[test]
    fn is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SyntheticPool>();
        let pool = Arc::new(tiny(1000));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        pool.assign(&name(t * 50 + i), Family::V6, t0).unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(pool.len(), 200);
        assert_consistent(&pool);
    }
}

/// One synthetic pool per sandbox, made on first use, plus a shared pool
/// for queries whose sandbox the kernel could not mark (a socket the
/// workload bound itself, a pure IPv6 resolver). The same address may mean
/// different names in different sandboxes: a connection is looked up in its
/// own sandbox's pool first.
pub struct SandboxPools {
    config: PoolConfig,
    shared: Arc<SyntheticPool>,
    by_sandbox: Mutex<HashMap<u32, Arc<SyntheticPool>>>,
    /// Names every pool reserves (`policy.local`).
    reserved: Vec<String>,
}

impl SandboxPools {
    pub fn new(config: PoolConfig, reserved: &[&str]) -> Result<Self, PoolError> {
        let reserved: Vec<String> = reserved.iter().map(|n| n.to_string()).collect();
        let shared = Arc::new(Self::make(&config, &reserved)?);
        Ok(Self {
            config,
            shared,
            by_sandbox: Mutex::new(HashMap::new()),
            reserved,
        })
    }

    fn make(config: &PoolConfig, reserved: &[String]) -> Result<SyntheticPool, PoolError> {
        let pool = SyntheticPool::new(config.clone())?;
        for name in reserved {
            pool.reserve(name)?;
        }
        Ok(pool)
    }

    pub fn shared(&self) -> Arc<SyntheticPool> {
        Arc::clone(&self.shared)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.shared.contains(ip)
    }

    /// The pool of sandbox `id`, created on first use.
    pub fn for_sandbox(&self, id: u32) -> Result<Arc<SyntheticPool>, PoolError> {
        let mut pools = self.by_sandbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&id) {
            return Ok(Arc::clone(pool));
        }
        let pool = Arc::new(Self::make(&self.config, &self.reserved)?);
        pools.insert(id, Arc::clone(&pool));
        Ok(pool)
    }

    /// The pool for a query from `client`: its sandbox's if the kernel
    /// marked the source (127.64.0.0/10), else the shared one.
    pub fn for_client(&self, client: IpAddr) -> Result<Arc<SyntheticPool>, PoolError> {
        let v4 = match client {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        match v4.and_then(|v4| portcullis_common::sandbox_of_dns_source(v4.octets())) {
            Some(id) => self.for_sandbox(id),
            None => Ok(self.shared()),
        }
    }

    /// The name behind `ip` for a connection from sandbox `id`: its own
    /// pool first, then the shared one.
    pub fn name_for(&self, id: u32, ip: IpAddr, now: Instant) -> Option<String> {
        let own = self
            .by_sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        own.and_then(|pool| pool.name_for(ip, now))
            .or_else(|| self.shared.name_for(ip, now))
    }

    pub fn forget(&self, id: u32) {
        self.by_sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

#[cfg(test)]
mod sandbox_pool_tests {
    use super::*;

    #[test]
    fn sandboxes_have_their_own_names_and_fall_back_to_the_shared_pool() {
        let pools = SandboxPools::new(PoolConfig::default(), &["policy.local"]).unwrap();
        let now = Instant::now();
        let a = pools.for_client("127.64.0.1".parse().unwrap()).unwrap();
        let b = pools.for_client("127.64.0.2".parse().unwrap()).unwrap();
        let ip_a = a.assign("a.example", Family::V4, now).unwrap();
        assert_eq!(pools.name_for(1, ip_a, now).as_deref(), Some("a.example"));
        // Sandbox 2 never asked for it.
        assert_ne!(pools.name_for(2, ip_a, now).as_deref(), Some("a.example"));
        let _ = b;
        // Unmarked queries land in the shared pool, visible to everyone.
        let shared = pools.for_client("127.0.0.1".parse().unwrap()).unwrap();
        let ip_s = shared.assign("s.example", Family::V4, now).unwrap();
        assert_eq!(pools.name_for(2, ip_s, now).as_deref(), Some("s.example"));
        // policy.local is reserved in every pool, at the same address.
        let (l1, _) = a.reserve("policy.local").unwrap();
        let (l2, _) = b.reserve("policy.local").unwrap();
        assert_eq!(
            a.name_for(IpAddr::V4(l1), now).as_deref(),
            Some("policy.local")
        );
        assert_eq!(
            b.name_for(IpAddr::V4(l2), now).as_deref(),
            Some("policy.local")
        );
    }
}
