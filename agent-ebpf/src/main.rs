//! Portcullis kernel programs.
//!
//! Attached to each sandbox cgroup:
//! - `connect4/6`, `sendmsg4/6`: send TCP to the transparent listener and UDP
//!   port 53 to the DNS responder, recording the original destination; refuse
//!   every other datagram or protocol and report the refusal.
//! - `sock_ops` (TCP_CONNECT_CB): copy the record to the socket's source
//!   address, which the proxy sees as its peer after `accept()`.
//! - `getpeername4/6`, `recvmsg4/6`: show the workload the peer it asked for.
//! - `sock_release`: forget the socket's record.
//!
//! Attached once: `sched_process_exec` and `sched_process_fork`, filtered to
//! sandbox cgroups, feed the agent's process cache.
//!
//! Decisions live in `portcullis_common::classify`; this file reads contexts
//! and applies results.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_bind, bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext, TracePointContext},
};
use aya_log_ebpf::warn;
use portcullis_common::{
    Addr6, COMM_LEN, ConnectRecord, DatapathConfig, DenialReason, Hook, KernelDenial, PROCESS_EXEC,
    PROCESS_FORK, ProcessEvent, SocketAction, SourceKey, classify, counter, is_v4_mapped,
    source_key, v4_mapped,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[map]
static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// cgroup id -> sandbox id, written by the agent.
#[map]
static SANDBOX_CGROUPS: HashMap<u64, u32> = HashMap::pinned(4096, 0);

#[map]
static CONNECT_BY_COOKIE: LruHashMap<u64, ConnectRecord> = LruHashMap::pinned(65536, 0);

#[map]
static CONNECT_BY_SOURCE: LruHashMap<SourceKey, ConnectRecord> = LruHashMap::pinned(65536, 0);

#[map]
static KERNEL_DENIALS: RingBuf = RingBuf::pinned(256 * 1024, 0);

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::pinned(1024 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
fn bump(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn config() -> Option<DatapathConfig> {
    CONFIG.get(0).copied()
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// Who is calling, and where to.
#[inline(always)]
fn record_for(
    ctx: &SockAddrContext,
    dst: Addr6,
    dst_port: u16,
    family: u16,
    protocol: u32,
) -> ConnectRecord {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helpers valid in cgroup_sock_addr programs.
    let (cgroup_id, cookie, boot_ns) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_ktime_get_boot_ns(),
        )
    };
    ConnectRecord {
        dst_addr: dst,
        dst_port,
        family,
        protocol: protocol as u8,
        _pad: [0; 3],
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        cookie,
        boot_ns,
        comm: current_comm(),
    }
}

#[inline(always)]
fn report_denial(record: ConnectRecord, reason: DenialReason, hook: Hook) {
    bump(counter::KERNEL_DENIED);
    match KERNEL_DENIALS.reserve::<KernelDenial>(0) {
        Some(mut entry) => {
            entry.write(KernelDenial {
                record,
                reason: reason as u32,
                hook: hook as u32,
            });
            entry.submit(0);
        }
        None => bump(counter::DENIAL_EVENTS_DROPPED),
    }
}

/// The destination the workload passed, in the IPv6 layout.
#[inline(always)]
unsafe fn destination(sa: *const bpf_sock_addr, v6: bool) -> Addr6 {
    // SAFETY: the kernel hands us a valid context; ip6 words are read one by
    // one because the verifier rejects a wide read of a modified ctx pointer.
    unsafe {
        if v6 {
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ]
        } else {
            v4_mapped((*sa).user_ip4)
        }
    }
}

#[inline(always)]
unsafe fn set_destination(
    sa: *mut bpf_sock_addr,
    v6: bool,
    dst: &Addr6,
    ip4: u32,
    ip6: &Addr6,
    port: u16,
) {
    // SAFETY: user_ip4/user_ip6/user_port are writable in these hooks.
    unsafe {
        if v6 {
            let target = if is_v4_mapped(dst) {
                v4_mapped(ip4)
            } else {
                *ip6
            };
            (*sa).user_ip6[0] = target[0];
            (*sa).user_ip6[1] = target[1];
            (*sa).user_ip6[2] = target[2];
            (*sa).user_ip6[3] = target[3];
        } else {
            (*sa).user_ip4 = ip4;
        }
        (*sa).user_port = u32::from(port.to_be());
    }
}

#[inline(always)]
unsafe fn socket_mark(sa: *const bpf_sock_addr) -> u32 {
    // SAFETY: `sk` is a kernel-provided pointer, checked for null.
    unsafe {
        let sk: *mut bpf_sock = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() { 0 } else { (*sk).mark }
    }
}

/// connect4/6 and sendmsg4/6 share this body.
#[inline(always)]
fn redirect_or_refuse(ctx: &SockAddrContext, v6: bool, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context for the duration of the program.
    let (dst, port, protocol, mark) = unsafe {
        (
            destination(sa, v6),
            u16::from_be((*sa).user_port as u16),
            (*sa).protocol,
            socket_mark(sa),
        )
    };
    let family = if v6 && !is_v4_mapped(&dst) {
        portcullis_common::AF_INET6
    } else {
        portcullis_common::AF_INET
    };
    let Some(config) = config() else {
        report_denial(
            record_for(ctx, dst, port, family, protocol),
            DenialReason::DatapathNotConfigured,
            hook,
        );
        return REFUSE;
    };
    let (ip4, ip6, target_port, slot) = match classify(&config, protocol, &dst, port, mark) {
        SocketAction::PassThrough => {
            if mark != 0 && mark == config.self_mark {
                bump(counter::SELF_MARK_SKIPPED);
            }
            return ALLOW;
        }
        SocketAction::Deny(reason) => {
            report_denial(record_for(ctx, dst, port, family, protocol), reason, hook);
            return REFUSE;
        }
        SocketAction::RedirectToProxy => (
            config.proxy_ip4,
            config.proxy_ip6,
            config.proxy_port,
            counter::REDIRECTED_TCP,
        ),
        SocketAction::RedirectToDns => (
            config.dns_ip4,
            config.dns_ip6,
            config.dns_port,
            counter::REDIRECTED_DNS,
        ),
    };
    let record = record_for(ctx, dst, port, family, protocol);
    if slot == counter::REDIRECTED_DNS {
        // SAFETY: valid context of a connect or sendmsg hook.
        unsafe { mark_dns_source(ctx, &record, v6, &dst, hook) };
    }
    if CONNECT_BY_COOKIE
        .insert(&record.cookie, &record, 0)
        .is_err()
    {
        // Without a record the proxy could not decide: refuse now.
        warn!(
            ctx,
            "portcullis: could not record socket {} of pid {}", record.cookie, record.tgid
        );
        report_denial(record, DenialReason::RecordFailed, hook);
        return REFUSE;
    }
    // SAFETY: writable fields of this hook's context.
    unsafe { set_destination(sa, v6, &dst, ip4, &ip6, target_port) };
    bump(slot);
    ALLOW
}

/// `struct sockaddr_in6`, which `bpf_bind` takes for IPv6 sockets.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: Addr6,
    scope_id: u32,
}

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// Sends a sandbox's DNS queries from its own loopback address
/// (127.64.0.0/10), so the responder knows whose query it answers: set the
/// source of this datagram (sendmsg) or bind the socket (connect). A socket
/// the workload bound itself keeps its address and is answered from the
/// shared pool.
#[inline(always)]
unsafe fn mark_dns_source(
    ctx: &SockAddrContext,
    record: &ConnectRecord,
    v6: bool,
    dst: &Addr6,
    hook: Hook,
) {
    // SAFETY: lookup only; the value is copied.
    let Some(id) = (unsafe { SANDBOX_CGROUPS.get(&record.cgroup_id) }).copied() else {
        return;
    };
    let Some(src) = portcullis_common::dns_source_for(id) else {
        return;
    };
    // Pure IPv6 resolvers keep ::1 and the shared pool.
    if v6 && !is_v4_mapped(dst) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: msg_src fields are writable in sendmsg hooks; bpf_bind is
    // allowed in connect hooks and reads a stack sockaddr.
    unsafe {
        match hook {
            Hook::Sendmsg4 => (*sa).msg_src_ip4 = src,
            Hook::Sendmsg6 => {
                let mapped = v4_mapped(src);
                (*sa).msg_src_ip6[0] = mapped[0];
                (*sa).msg_src_ip6[1] = mapped[1];
                (*sa).msg_src_ip6[2] = mapped[2];
                (*sa).msg_src_ip6[3] = mapped[3];
            }
            Hook::Connect4 => {
                let mut addr = SockaddrIn {
                    family: portcullis_common::AF_INET,
                    port: 0,
                    addr: src,
                    zero: [0; 8],
                };
                let _ = bpf_bind(
                    sa,
                    (&mut addr as *mut SockaddrIn).cast(),
                    core::mem::size_of::<SockaddrIn>() as i32,
                );
            }
            Hook::Connect6 => {
                let mut addr = SockaddrIn6 {
                    family: portcullis_common::AF_INET6,
                    port: 0,
                    flowinfo: 0,
                    addr: v4_mapped(src),
                    scope_id: 0,
                };
                let _ = bpf_bind(
                    sa,
                    (&mut addr as *mut SockaddrIn6).cast(),
                    core::mem::size_of::<SockaddrIn6>() as i32,
                );
            }
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    redirect_or_refuse(&ctx, false, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    redirect_or_refuse(&ctx, true, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect_or_refuse(&ctx, false, Hook::Sendmsg4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect_or_refuse(&ctx, true, Hook::Sendmsg6)
}

/// Puts back the original peer when the kernel reports one of the agent's
/// listeners (getpeername on TCP, the source of a DNS reply on UDP).
#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, v6: bool, dns: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(config) = config() else {
        return ALLOW;
    };
    // SAFETY: valid context; fields read as the verifier expects.
    let (peer, port) = unsafe { (destination(sa, v6), u16::from_be((*sa).user_port as u16)) };
    let (ip4, ip6, listener_port) = if dns {
        (config.dns_ip4, config.dns_ip6, config.dns_port)
    } else {
        (config.proxy_ip4, config.proxy_ip6, config.proxy_port)
    };
    let is_listener = port == listener_port
        && (portcullis_common::addr_eq(&peer, &v4_mapped(ip4))
            || portcullis_common::addr_eq(&peer, &ip6));
    if !is_listener {
        return ALLOW;
    }
    // SAFETY: helper valid in cgroup_sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before any other map operation.
    let Some(record) = (unsafe { CONNECT_BY_COOKIE.get(&cookie) }).copied() else {
        return ALLOW;
    };
    // SAFETY: writable fields of this hook's context.
    unsafe {
        if v6 {
            (*sa).user_ip6[0] = record.dst_addr[0];
            (*sa).user_ip6[1] = record.dst_addr[1];
            (*sa).user_ip6[2] = record.dst_addr[2];
            (*sa).user_ip6[3] = record.dst_addr[3];
        } else {
            (*sa).user_ip4 = record.dst_addr[3];
        }
        (*sa).user_port = u32::from(record.dst_port.to_be());
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true, true)
}

/// Named apart from its `sockops` section, which would clash at link time.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: helper valid in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before any other map operation.
    let Some(record) = (unsafe { CONNECT_BY_COOKIE.get(&cookie) }).copied() else {
        return 1;
    };
    let key = source_key(
        ctx.family(),
        ctx.local_ip4(),
        ctx.local_ip6(),
        ctx.remote_ip6(),
        ctx.local_port(),
    );
    // A failure here surfaces in the proxy as a lookup miss, which denies.
    let _ = CONNECT_BY_SOURCE.insert(&key, &record, 0);
    1
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: helper valid in cgroup_sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = CONNECT_BY_COOKIE.remove(&cookie);
    ALLOW
}

#[inline(always)]
fn in_sandbox() -> Option<u64> {
    // SAFETY: helper valid in tracepoint programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: only presence is checked.
    unsafe { SANDBOX_CGROUPS.get(&cgroup_id) }.map(|_| cgroup_id)
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    let Some(cgroup_id) = in_sandbox() else {
        return 0;
    };
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        bump(counter::PROCESS_EVENTS_DROPPED);
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory of the right size; the
    // tracepoint record layout is `__data_loc char[] filename` at offset 8.
    unsafe {
        (*event).kind = PROCESS_EXEC;
        (*event).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).parent_tgid = 0;
        (*event)._pad = 0;
        (*event).cgroup_id = cgroup_id;
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).comm = current_comm();
        (*event).filename[0] = 0;
        if let Ok(loc) = ctx.read_at::<u32>(8) {
            let offset = (loc & 0xffff) as usize;
            let src = (ctx.as_ptr() as *const u8).add(offset);
            let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*event).filename);
        }
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    let Some(cgroup_id) = in_sandbox() else {
        return 0;
    };
    let Some(config) = config() else {
        return 0;
    };
    if config.fork_child_pid_offset == 0 {
        return 0;
    }
    // SAFETY: the offset comes from this kernel's tracefs format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>((config.fork_child_pid_offset & 0xff) as usize) })
    else {
        return 0;
    };
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        bump(counter::PROCESS_EVENTS_DROPPED);
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring memory of the right size.
    unsafe {
        (*event).kind = PROCESS_FORK;
        (*event).tgid = child as u32;
        (*event).parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event)._pad = 0;
        (*event).cgroup_id = cgroup_id;
        (*event).boot_ns = bpf_ktime_get_boot_ns();
        (*event).comm = current_comm();
        (*event).filename[0] = 0;
    }
    entry.submit(0);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
