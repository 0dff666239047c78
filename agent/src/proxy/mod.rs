//! The transparent listener: every TCP connect of a sandbox lands here.
//!
//! Per connection: recover the original destination from the kernel
//! (a miss is a deny), attribute the binary, decide at L4, then relay or
//! close. Every decision is audited.

pub mod relay;
pub mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
};

use portcullis_common::{ConnectRecord, IPPROTO_UDP};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    audit::{
        AuditEvent, ConnectionFacts, DenyCause, Inspection, NetworkActivity, ProcessFacts,
        SsrfKind, Transport,
    },
    daemon::{Agent, Stats},
    datapath::addr_from_abi,
    identity::Identity,
    policy::{L4Decision, L4Request},
};

pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let agent = agent.clone();
                tokio::spawn(async move { handle(agent, stream, peer).await });
            }
            Err(e) => {
                // EMFILE and friends: keep serving once resources return.
                log::warn!("accept failed: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// What the proxy knows once a connection is attributed.
struct Attributed {
    sandbox: String,
    identity: Result<Identity, String>,
    record: ConnectRecord,
    dst: SocketAddr,
    hostnames: Vec<String>,
    policy: Arc<crate::policy::Policy>,
}

async fn handle(agent: Arc<Agent>, stream: TcpStream, peer: SocketAddr) {
    Stats::bump(&agent.stats.connections_total);
    let record = agent
        .datapath
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_connect(peer);
    let Some(record) = record else {
        // Not redirected by our hooks (a direct connect to the listener) or
        // evicted from the LRU: nothing to decide on, so deny.
        Stats::bump(&agent.stats.lookup_misses);
        Stats::bump(&agent.stats.connections_denied);
        let facts = ConnectionFacts {
            sandbox: "-".into(),
            src: Some(peer),
            dst_port: stream.local_addr().map(|a| a.port()).unwrap_or(0),
            reason: Some("no original destination recorded for this connection".into()),
            ..ConnectionFacts::default()
        };
        agent
            .audit
            .log(NetworkActivity::denied(&facts, DenyCause::Policy).into());
        refuse(stream);
        return;
    };
    let conn = attribute(&agent, record);
    let facts = facts_for(&conn, Some(peer));
    let identity = match &conn.identity {
        Ok(identity) => identity,
        Err(reason) => {
            deny(
                &agent,
                stream,
                facts_with_reason(facts, reason.clone()),
                DenyCause::Policy,
            );
            return;
        }
    };
    let binaries: Vec<&std::path::Path> = identity.binary_paths().collect();
    let decision = conn.policy.evaluate_l4(&L4Request {
        hostnames: &conn.hostnames,
        ip: conn.dst.ip(),
        port: conn.dst.port(),
        binaries: &binaries,
    });
    let (rule, host) = match decision {
        L4Decision::Deny { reason } => {
            deny(
                &agent,
                stream,
                facts_with_reason(facts, reason),
                DenyCause::Policy,
            );
            return;
        }
        L4Decision::Allow { rule, host } => (rule, host),
    };
    let facts = ConnectionFacts {
        policy: Some(rule),
        dst_host: Some(host),
        ..facts
    };
    if let Some(kind) = upstream::always_blocked(conn.dst.ip()) {
        let reason = format!(
            "{} is {kind}: never reachable from a sandbox",
            conn.dst.ip()
        );
        deny(
            &agent,
            stream,
            facts_with_reason(facts, reason),
            DenyCause::Ssrf(SsrfKind::InternalAddress),
        );
        return;
    }
    // The decision is audited; a failed dial after it is operational.
    agent
        .audit
        .log(NetworkActivity::allowed(&facts, Inspection::L4Only).into());
    let upstream = match upstream::dial(conn.dst, agent.config.self_mark).await {
        Ok(upstream) => upstream,
        Err(e) => {
            log::info!("sandbox {}: dial {} failed: {e}", conn.sandbox, conn.dst);
            refuse(stream);
            return;
        }
    };
    agent
        .stats
        .connections_active
        .fetch_add(1, Ordering::Relaxed);
    let result = relay::relay(stream, upstream, agent.config.relay, std::future::pending()).await;
    agent
        .stats
        .connections_active
        .fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        log::debug!("relay to {} ended: {e}", conn.dst);
    }
}

fn attribute(agent: &Agent, record: ConnectRecord) -> Attributed {
    let (sandbox, identity) = agent.attribute(&record);
    let sandbox = sandbox.as_ref();
    let identity = identity.map_err(|e| e.to_string());
    let ip = addr_from_abi(&record.dst_addr);
    Attributed {
        sandbox: sandbox
            .map(|s| s.record.name.to_string())
            .unwrap_or_else(|| "-".into()),
        // An unknown sandbox gets no policy: deny all.
        policy: sandbox
            .map(|s| s.policy.clone())
            .unwrap_or_else(|| Arc::new(crate::policy::Policy::deny_all())),
        identity,
        record,
        dst: SocketAddr::new(ip, record.dst_port),
        hostnames: agent.names.names_for(ip),
    }
}

fn facts_for(conn: &Attributed, src: Option<SocketAddr>) -> ConnectionFacts {
    ConnectionFacts {
        sandbox: conn.sandbox.clone(),
        process: Some(process_facts(&conn.record, conn.identity.as_ref().ok())),
        src,
        dst_host: conn.hostnames.first().cloned(),
        dst_ip: Some(conn.dst.ip()),
        dst_port: conn.dst.port(),
        protocol: if conn.record.protocol == IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        ..ConnectionFacts::default()
    }
}

fn process_facts(record: &ConnectRecord, identity: Option<&Identity>) -> ProcessFacts {
    match identity {
        Some(id) => ProcessFacts {
            binary: id.process.exe.display().to_string(),
            pid: record.tgid,
            cmd_line: id.cmd_line.clone(),
            uid: Some(record.uid),
            ancestors: id
                .ancestors
                .iter()
                .map(|p| (p.exe.display().to_string(), p.pid))
                .collect(),
        },
        // Unattributed: the kernel's comm is all we have.
        None => ProcessFacts {
            binary: crate::identity::comm_str(&record.comm),
            pid: record.tgid,
            uid: Some(record.uid),
            ..ProcessFacts::default()
        },
    }
}

fn facts_with_reason(facts: ConnectionFacts, reason: String) -> ConnectionFacts {
    ConnectionFacts {
        reason: Some(reason),
        ..facts
    }
}

fn deny(agent: &Agent, stream: TcpStream, facts: ConnectionFacts, cause: DenyCause) {
    Stats::bump(&agent.stats.connections_denied);
    log::info!(
        "denied {} -> {}:{}: {}",
        facts
            .process
            .as_ref()
            .map(|p| p.binary.as_str())
            .unwrap_or("?"),
        facts
            .dst_host
            .clone()
            .or_else(|| facts.dst_ip.map(|i| i.to_string()))
            .unwrap_or_default(),
        facts.dst_port,
        facts.reason.as_deref().unwrap_or("")
    );
    agent
        .audit
        .log(NetworkActivity::denied(&facts, cause).into());
    refuse(stream);
}

/// Closes with a reset, so the client fails at once instead of waiting.
fn refuse(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer. A zero linger makes close() send
    // a reset without blocking.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// The audit event for a refusal made in the kernel.
pub fn audit_kernel_denial(
    sandbox: Option<&str>,
    record: &ConnectRecord,
    identity: Option<&Identity>,
    reason: &str,
    hook: &str,
) -> AuditEvent {
    let ip: IpAddr = addr_from_abi(&record.dst_addr);
    let facts = ConnectionFacts {
        sandbox: sandbox.unwrap_or("-").to_string(),
        process: Some(process_facts(record, identity)),
        dst_ip: Some(ip),
        dst_port: record.dst_port,
        protocol: if record.protocol == IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        reason: Some(format!("{reason} (kernel {hook})")),
        ..ConnectionFacts::default()
    };
    NetworkActivity::kernel_refused(&facts)
        .with_unmapped("comm", crate::identity::comm_str(&record.comm))
        .with_unmapped("cgroup_id", record.cgroup_id)
        .with_unmapped("hook", hook)
        .into()
}
