//! The kernel/user ABI of Portcullis.
//!
//! Every type that crosses a BPF map or ring buffer is defined here once,
//! `#[repr(C)]`, and used by both the kernel programs (`agent-ebpf`) and the
//! agent. Sizes are pinned by tests so a layout change cannot slip through.
//! Addresses are kept as four big-endian `u32` words in the IPv6 layout; an
//! IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), which is also how a
//! dual-stack socket sees it, so one key shape serves both families.
#![no_std]

/// Names of the maps and programs in the BPF object, shared so the loader
/// and the kernel side can never disagree.
pub mod names {
    pub const CONFIG: &str = "CONFIG";
    pub const SANDBOX_CGROUPS: &str = "SANDBOX_CGROUPS";
    pub const CONNECT_BY_COOKIE: &str = "CONNECT_BY_COOKIE";
    pub const CONNECT_BY_SOURCE: &str = "CONNECT_BY_SOURCE";
    pub const KERNEL_DENIALS: &str = "KERNEL_DENIALS";
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";

    /// Programs attached to every sandbox cgroup, with their attach names.
    pub const CGROUP_PROGRAMS: [&str; 10] = [
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
        "recvmsg4",
        "recvmsg6",
        "getpeername4",
        "getpeername6",
        "sock_ops",
        "sock_release",
    ];
    /// Tracepoint programs, attached once per agent installation:
    /// (program, category, event).
    pub const TRACEPOINTS: [(&str, &str, &str); 2] = [
        ("process_exec", "sched", "sched_process_exec"),
        ("process_fork", "sched", "sched_process_fork"),
    ];
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of an exec'd file name kept from the tracepoint.
pub const FILENAME_LEN: usize = 256;

/// An address in the IPv6 layout: four words in network byte order.
/// IPv4 is stored IPv4-mapped.
pub type Addr6 = [u32; 4];

/// `::ffff:a.b.c.d` for an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> Addr6 {
    [0, 0, 0xffffu32.to_be(), ip4_be]
}

/// True when the address is IPv4-mapped (`::ffff:0:0/96`).
#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr6) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffffu32.to_be()
}

/// The datapath's configuration, written by the agent into the one-entry
/// `CONFIG` array. The programs read it on every hook, so a restarted agent
/// can move its listeners without reloading anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Transparent TCP listener, IPv4, network order.
    pub proxy_ip4: u32,
    /// Transparent TCP listener, IPv6, network order words.
    pub proxy_ip6: Addr6,
    /// DNS responder, IPv4, network order.
    pub dns_ip4: u32,
    /// DNS responder, IPv6.
    pub dns_ip6: Addr6,
    /// Listener ports, host order.
    pub proxy_port: u16,
    pub dns_port: u16,
    /// SO_MARK carried by the agent's own sockets; the hooks skip them.
    pub self_mark: u32,
    /// 1 once the agent has written a configuration. With 0 every hook denies.
    pub ready: u32,
    /// Offset of `child_pid` in the `sched_process_fork` record. It moved in
    /// kernel 6.x, so the agent reads it from tracefs; 0 disables fork events.
    pub fork_child_pid_offset: u32,
}

impl DatapathConfig {
    /// True when `addr:port` is one of the agent's own listeners, which the
    /// hooks must never rewrite (that would loop).
    #[inline(always)]
    pub fn is_agent_endpoint(&self, addr: &Addr6, port: u16) -> bool {
        let proxy = port == self.proxy_port
            && (addr_eq(addr, &v4_mapped(self.proxy_ip4)) || addr_eq(addr, &self.proxy_ip6));
        let dns = port == self.dns_port
            && (addr_eq(addr, &v4_mapped(self.dns_ip4)) || addr_eq(addr, &self.dns_ip6));
        proxy || dns
    }
}

#[inline(always)]
pub fn addr_eq(a: &Addr6, b: &Addr6) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// What a connect or sendmsg hook does with a socket of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketAction {
    /// Leave the destination as it is: the agent's own sockets and listeners.
    PassThrough,
    /// TCP: rewrite to the transparent listener and record the original.
    RedirectToProxy,
    /// UDP port 53: rewrite to the DNS responder and record the original.
    RedirectToDns,
    /// Refuse the call in the kernel and report it.
    Deny(DenialReason),
}

/// The datapath decision, kept pure so it is tested on the host. The BPF
/// programs only read the context and apply the result.
#[inline(always)]
pub fn classify(
    config: &DatapathConfig,
    protocol: u32,
    dst: &Addr6,
    dst_port: u16,
    socket_mark: u32,
) -> SocketAction {
    if config.ready != 1 {
        return SocketAction::Deny(DenialReason::DatapathNotConfigured);
    }
    if config.self_mark != 0 && socket_mark == config.self_mark {
        return SocketAction::PassThrough;
    }
    if config.is_agent_endpoint(dst, dst_port) {
        return SocketAction::PassThrough;
    }
    if protocol == IPPROTO_TCP as u32 {
        SocketAction::RedirectToProxy
    } else if protocol == IPPROTO_UDP as u32 {
        if dst_port == 53 {
            SocketAction::RedirectToDns
        } else {
            SocketAction::Deny(DenialReason::UdpNotAllowed)
        }
    } else {
        SocketAction::Deny(DenialReason::ProtocolNotRedirectable)
    }
}

/// First address of the loopback block DNS queries are sent from, one
/// address per sandbox: 127.64.0.0/10. The responder reads the sandbox from
/// the source of a query, so each sandbox gets its own synthetic names.
pub const DNS_SOURCE_BASE: u32 = 0x7f40_0000;
/// Sandbox ids that fit in the block.
pub const DNS_SOURCE_MAX_ID: u32 = (1 << 22) - 1;

/// The IPv4 source (network order) for DNS queries of sandbox `id`, or None
/// for an id the block cannot hold (0 is "unknown").
#[inline(always)]
pub const fn dns_source_for(id: u32) -> Option<u32> {
    if id == 0 || id > DNS_SOURCE_MAX_ID {
        None
    } else {
        Some((DNS_SOURCE_BASE | id).to_be())
    }
}

/// The sandbox id a DNS query's IPv4 source (host order octets) encodes.
#[inline(always)]
pub const fn sandbox_of_dns_source(octets: [u8; 4]) -> Option<u32> {
    let ip = u32::from_be_bytes(octets);
    if ip & 0xffc0_0000 == DNS_SOURCE_BASE && ip != DNS_SOURCE_BASE {
        Some(ip & DNS_SOURCE_MAX_ID)
    } else {
        None
    }
}

/// The `CONNECT_BY_SOURCE` key for a socket seen at `sock_ops`. An AF_INET6
/// socket connected to an IPv4-mapped address runs IPv4 underneath: its
/// usable local address is the IPv4 one, which the proxy sees as the peer of
/// its IPv4 listener.
#[inline(always)]
pub fn source_key(
    family: u32,
    local_ip4: u32,
    local_ip6: Addr6,
    remote_ip6: Addr6,
    local_port: u32,
) -> SourceKey {
    let addr = if family == AF_INET as u32 || is_v4_mapped(&remote_ip6) {
        v4_mapped(local_ip4)
    } else {
        local_ip6
    };
    SourceKey {
        addr,
        port: local_port,
    }
}

/// What a connect hook saw: the destination the workload asked for and who
/// asked. Stored by socket cookie in `connect4/6` and moved to the socket's
/// source address at `sock_ops` TCP_CONNECT_CB, where the proxy finds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    /// Original destination (IPv4-mapped for IPv4).
    pub dst_addr: Addr6,
    /// Original destination port, host order.
    pub dst_port: u16,
    /// Address family the workload used (`AF_INET` or `AF_INET6`).
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub _pad: [u8; 3],
    /// Process id (the kernel's tgid), in the initial pid namespace.
    pub tgid: u32,
    /// Thread id that made the call.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub cookie: u64,
    /// `bpf_ktime_get_boot_ns` at the hook: orders the call against exec
    /// events and process start times.
    pub boot_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// Key of `CONNECT_BY_SOURCE`: the redirected socket's local address, which
/// the proxy reads as the peer address after `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: Addr6,
    /// Host order, widened so the struct has no padding.
    pub port: u32,
}

/// Why the kernel refused a socket operation.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialReason {
    /// UDP to anything but port 53 (QUIC included): clients fall back to TCP.
    UdpNotAllowed = 1,
    /// A protocol the datapath cannot redirect (ICMP datagram sockets, ...).
    ProtocolNotRedirectable = 2,
    /// The agent has not configured the datapath: fail closed.
    DatapathNotConfigured = 3,
    /// The original destination could not be recorded (map full/failure).
    RecordFailed = 4,
}

impl DenialReason {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::UdpNotAllowed),
            2 => Some(Self::ProtocolNotRedirectable),
            3 => Some(Self::DatapathNotConfigured),
            4 => Some(Self::RecordFailed),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UdpNotAllowed => "udp_not_allowed",
            Self::ProtocolNotRedirectable => "protocol_not_redirectable",
            Self::DatapathNotConfigured => "datapath_not_configured",
            Self::RecordFailed => "record_failed",
        }
    }
}

/// A refusal made in the kernel, sent to the agent through `KERNEL_DENIALS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelDenial {
    pub record: ConnectRecord,
    /// A `DenialReason` value.
    pub reason: u32,
    /// Which hook refused: a `Hook` value.
    pub hook: u32,
}

/// The hook a denial or record came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
}

impl Hook {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
        }
    }
}

pub const PROCESS_EXEC: u32 = 1;
pub const PROCESS_FORK: u32 = 2;

/// Process lifecycle inside sandbox cgroups, from the sched tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// `PROCESS_EXEC` or `PROCESS_FORK`.
    pub kind: u32,
    /// Exec: the process. Fork: the new child.
    pub tgid: u32,
    /// Fork: the forking process. Exec: 0.
    pub parent_tgid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub boot_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// Exec: the file name passed to execve, NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
}

/// Slots of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Connections redirected to the transparent listener.
    pub const REDIRECTED_TCP: u32 = 0;
    /// Datagrams and connects redirected to the DNS responder.
    pub const REDIRECTED_DNS: u32 = 1;
    /// Operations refused in the kernel.
    pub const KERNEL_DENIED: u32 = 2;
    /// Kernel denials that could not be reported: the ring was full.
    pub const DENIAL_EVENTS_DROPPED: u32 = 3;
    /// Process events that could not be reported: the ring was full.
    pub const PROCESS_EVENTS_DROPPED: u32 = 4;
    /// Sockets carrying the agent's mark, let through unchanged.
    pub const SELF_MARK_SKIPPED: u32 = 5;
    pub const COUNT: u32 = 6;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no padding holes that carry meaning.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::KernelDenial {}
    unsafe impl aya::Pod for super::ProcessEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<DatapathConfig>(), 56);
        assert_eq!(size_of::<ConnectRecord>(), 80);
        assert_eq!(size_of::<SourceKey>(), 20);
        assert_eq!(size_of::<KernelDenial>(), 88);
        assert_eq!(size_of::<ProcessEvent>(), 304);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let ip = u32::from_be_bytes([192, 0, 2, 10]).to_be();
        let mapped = v4_mapped(ip);
        assert!(is_v4_mapped(&mapped));
        assert!(!is_v4_mapped(&[0, 0, 0, 1u32.to_be()]));
    }

    fn loopback4() -> u32 {
        u32::from_be_bytes([127, 0, 0, 1]).to_be()
    }

    fn config() -> DatapathConfig {
        DatapathConfig {
            proxy_ip4: loopback4(),
            proxy_ip6: [0, 0, 0, 1u32.to_be()],
            dns_ip4: loopback4(),
            dns_ip6: [0, 0, 0, 1u32.to_be()],
            proxy_port: 15001,
            dns_port: 15053,
            self_mark: 0x5043,
            ready: 1,
            fork_child_pid_offset: 20,
        }
    }

    fn testnet() -> Addr6 {
        v4_mapped(u32::from_be_bytes([192, 0, 2, 10]).to_be())
    }

    #[test]
    fn tcp_is_redirected_and_udp_only_for_dns() {
        let c = config();
        assert_eq!(
            classify(&c, 6, &testnet(), 443, 0),
            SocketAction::RedirectToProxy
        );
        assert_eq!(
            classify(&c, 17, &testnet(), 53, 0),
            SocketAction::RedirectToDns
        );
        assert_eq!(
            classify(&c, 17, &testnet(), 443, 0),
            SocketAction::Deny(DenialReason::UdpNotAllowed)
        );
        assert_eq!(
            classify(&c, 1, &testnet(), 0, 0),
            SocketAction::Deny(DenialReason::ProtocolNotRedirectable)
        );
    }

    #[test]
    fn unconfigured_datapath_fails_closed() {
        let c = DatapathConfig {
            ready: 0,
            ..config()
        };
        assert_eq!(
            classify(&c, 6, &testnet(), 443, 0),
            SocketAction::Deny(DenialReason::DatapathNotConfigured)
        );
    }

    #[test]
    fn agent_sockets_and_listeners_are_never_rewritten() {
        let c = config();
        assert_eq!(
            classify(&c, 6, &testnet(), 443, 0x5043),
            SocketAction::PassThrough
        );
        assert_eq!(
            classify(&c, 6, &v4_mapped(loopback4()), 15001, 0),
            SocketAction::PassThrough
        );
        assert_eq!(
            classify(&c, 6, &[0, 0, 0, 1u32.to_be()], 15001, 0),
            SocketAction::PassThrough
        );
        assert_eq!(
            classify(&c, 17, &v4_mapped(loopback4()), 15053, 0),
            SocketAction::PassThrough
        );
        // Another loopback port is still redirected: loopback is not a bypass.
        assert_eq!(
            classify(&c, 6, &v4_mapped(loopback4()), 8080, 0),
            SocketAction::RedirectToProxy
        );
    }

    #[test]
    fn source_key_uses_ipv4_for_mapped_sockets() {
        let lo6 = [0, 0, 0, 1u32.to_be()];
        let mapped_proxy = v4_mapped(loopback4());
        let k = source_key(AF_INET6 as u32, loopback4(), [0; 4], mapped_proxy, 40000);
        assert_eq!(
            k,
            SourceKey {
                addr: v4_mapped(loopback4()),
                port: 40000
            }
        );
        let k = source_key(AF_INET6 as u32, 0, lo6, lo6, 40001);
        assert_eq!(
            k,
            SourceKey {
                addr: lo6,
                port: 40001
            }
        );
        let k = source_key(AF_INET as u32, loopback4(), [0; 4], [0; 4], 40002);
        assert_eq!(k.addr, v4_mapped(loopback4()));
    }

    #[test]
    fn dns_sources_encode_sandboxes() {
        for id in [1, 2, 255, 256, 70_000, DNS_SOURCE_MAX_ID] {
            let be = dns_source_for(id).unwrap();
            let octets = u32::from_be(be).to_be_bytes();
            assert_eq!(octets[0], 127);
            assert_eq!(sandbox_of_dns_source(octets), Some(id));
        }
        assert_eq!(dns_source_for(0), None);
        assert_eq!(dns_source_for(DNS_SOURCE_MAX_ID + 1), None);
        assert_eq!(sandbox_of_dns_source([127, 0, 0, 1]), None);
        assert_eq!(sandbox_of_dns_source([127, 64, 0, 0]), None);
        assert_eq!(sandbox_of_dns_source([10, 64, 0, 1]), None);
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            DenialReason::UdpNotAllowed,
            DenialReason::ProtocolNotRedirectable,
            DenialReason::DatapathNotConfigured,
            DenialReason::RecordFailed,
        ] {
            assert_eq!(DenialReason::from_u32(r as u32), Some(r));
        }
        assert_eq!(DenialReason::from_u32(0), None);
    }
}
