//! Readers of the kernel's rings: denials, process events, aya-log.

use std::{
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use portcullis_common::{DenialReason, Hook, KernelDenial, PROCESS_EXEC, ProcessEvent};
use tokio::io::unix::AsyncFd;

use super::Agent;
use crate::{
    datapath::addr_from_abi,
    identity::{
        comm_str,
        procfs::{ProcFs, ProcSource},
    },
};

/// Copies a `#[repr(C)]` record out of ring memory.
pub fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; T is plain data from our own ABI crate.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// `/proc/<tgid>/exe` for an exec event, if the process there is still the
/// one that exec'd (it started no later than the event).
pub fn exe_if_current(event: &ProcessEvent) -> Option<PathBuf> {
    if event.kind != PROCESS_EXEC {
        return None;
    }
    let proc = ProcFs::default();
    let start = proc.start_boot_ns(event.tgid)?;
    (start <= event.boot_ns.saturating_add(20_000_000))
        .then(|| proc.exe(event.tgid))
        .flatten()
}

/// Registers a ring's fd with the reactor for readability.
fn readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: every ring passed here is a map fd owned by the agent (or by
    // the value itself) for the life of the process; it is never closed
    // while registered.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The process ring's fd; the ring itself stays in the agent's mutex.
struct BorrowedRing(RawFd);

impl AsRawFd for BorrowedRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub fn spawn_readers(
    agent: Arc<Agent>,
    denials: RingBuf<MapData>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
) -> Result<()> {
    let mut denials = readable(denials)?;
    let denial_agent = agent.clone();
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = denials.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(d) = read_pod::<KernelDenial>(&item) {
                    batch.push(d);
                }
            }
            guard.clear_ready();
            for denial in batch {
                report_kernel_denial(&denial_agent, &denial);
            }
        }
    });

    // The process ring stays in the agent (the proxy drains it on demand);
    // this task drains it when the kernel signals new data.
    let processes = readable(BorrowedRing(agent.process_ring_fd()))?;
    let process_agent = agent.clone();
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = processes.readable().await else {
                return;
            };
            process_agent.drain_process_events();
            guard.clear_ready();
        }
    });

    if let Some(logger) = logger {
        let mut logger = readable(logger)?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = logger.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    Ok(())
}

/// glibc's getaddrinfo sorts the answers it got by connect()ing a UDP
/// socket to each address, without sending anything. Every lookup from a
/// sandbox would otherwise log two kernel refusals for our own synthetic
/// answers. A UDP connect to a synthetic address carries no data (the
/// refusal stands and is counted); a real datagram always goes through
/// sendmsg and is audited, and a client that gives up on UDP falls back to
/// TCP, which is decided and audited like any connection.
fn is_address_sorting_probe(agent: &Agent, denial: &KernelDenial) -> bool {
    let connect = matches!(
        Hook::from_u32(denial.hook),
        Some(Hook::Connect4 | Hook::Connect6)
    );
    connect
        && denial.record.protocol == portcullis_common::IPPROTO_UDP
        && agent.pools.contains(addr_from_abi(&denial.record.dst_addr))
}

fn report_kernel_denial(agent: &Agent, denial: &KernelDenial) {
    agent
        .stats
        .kernel_denials_seen
        .fetch_add(1, Ordering::Relaxed);
    let record = &denial.record;
    if is_address_sorting_probe(agent, denial) {
        // Counted, not audited: see `is_address_sorting_probe`.
        return;
    }
    let (sandbox, identity) = agent.attribute(record);
    let identity = identity.ok();
    let sandbox = sandbox.map(|s| s.record.name.to_string());
    let reason = DenialReason::from_u32(denial.reason)
        .map(DenialReason::as_str)
        .unwrap_or("unknown");
    let hook = Hook::from_u32(denial.hook)
        .map(Hook::as_str)
        .unwrap_or("unknown");
    let dst = addr_from_abi(&record.dst_addr);
    log::info!(
        "kernel refused {} to {}:{} from pid {} ({}) in sandbox {}: {reason} [{hook}]",
        if record.protocol == portcullis_common::IPPROTO_UDP {
            "udp"
        } else {
            "socket"
        },
        dst,
        record.dst_port,
        record.tgid,
        comm_str(&record.comm),
        sandbox.as_deref().unwrap_or("?"),
    );
    agent.audit.log(crate::proxy::audit_kernel_denial(
        sandbox.as_deref(),
        record,
        identity.as_ref(),
        reason,
        hook,
    ));
}
