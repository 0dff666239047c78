//! The transparent listener: every TCP connect of a sandbox lands here.
//!
//! Per connection:
//! 1. recover the original destination from the kernel (a miss is a deny);
//! 2. attribute the binary and the sandbox, and take the policy snapshot
//!    in force, which the connection keeps;
//! 3. learn the name: a synthetic address from the agent's DNS maps back
//!    to the name the workload resolved; a TLS SNI or HTTP Host the client
//!    sends must agree with it;
//! 4. decide at L4; resolve the name only now, and dial only addresses the
//!    SSRF rules permit;
//! 5. relay until either side closes or a reload withdraws the permission.
//!
//! Every decision is audited.

pub mod http;
pub mod l7;
pub mod relay;
pub mod sniff;
pub mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use portcullis_common::{ConnectRecord, IPPROTO_UDP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    audit::{
        AuditEvent, ConnectionFacts, DenyCause, Inspection, NetworkActivity, ProcessFacts,
        SsrfKind, Transport,
    },
    daemon::{Agent, SandboxView, Stats, policies::Snapshot},
    datapath::addr_from_abi,
    deny::{DenyResponse, ErrorKind},
    dns::Resolve,
    identity::Identity,
    policy::{L4Decision, L4Request, ssrf},
};

/// How long the proxy waits for a client to speak (first, or more of a
/// started hello or head) before treating the stream as opaque.
/// Server-first protocols pay this once.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(300);
/// How long a started ClientHello or request head may take to complete.
const SNIFF_DEADLINE: Duration = Duration::from_secs(5);

pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let mut retry = crate::accept::Retry::new("proxy");
    let mut reserve = crate::accept::Reserve::new("proxy");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                retry.accepted();
                if reserve.must_refuse(std::os::fd::AsRawFd::as_raw_fd(&stream)) {
                    refuse(stream);
                    continue;
                }
                let agent = agent.clone();
                tokio::spawn(async move { handle(agent, stream, peer).await });
            }
            Err(e) => retry.failed(&e).await,
        }
    }
}

/// What the proxy knows once a connection is attributed.
struct Attributed {
    /// Subscribed when the snapshot was taken, so no reload can slip
    /// between the decision and the relay's watch.
    policy_rx: Option<watch::Receiver<Arc<Snapshot>>>,
    sandbox: String,
    snapshot: Arc<Snapshot>,
    identity: Result<Identity, String>,
    record: ConnectRecord,
    dst: SocketAddr,
    /// The name behind a synthetic destination address.
    name: Option<String>,
    /// The destination is a synthetic address whose name is no longer known.
    stale_synthetic: bool,
}

/// An L4 question with owned parts, re-asked when the policy reloads.
struct Question {
    hostnames: Vec<String>,
    ip: IpAddr,
    port: u16,
    binaries: Vec<PathBuf>,
}

impl Question {
    fn ask(&self, snapshot: &Snapshot) -> L4Decision {
        let binaries: Vec<&std::path::Path> = self.binaries.iter().map(PathBuf::as_path).collect();
        snapshot.policy.evaluate_l4(&L4Request {
            hostnames: &self.hostnames,
            ip: self.ip,
            port: self.port,
            binaries: &binaries,
        })
    }
}

async fn handle(agent: Arc<Agent>, mut stream: TcpStream, peer: SocketAddr) {
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
            return deny(
                &agent,
                stream,
                with_reason(facts, reason.clone()),
                DenyCause::Policy,
            );
        }
    };
    if conn.stale_synthetic {
        let reason = format!(
            "{} is not a DNS answer this sandbox holds (expired, or resolved elsewhere); resolve the name again",
            conn.dst.ip()
        );
        return deny(
            &agent,
            stream,
            with_reason(facts, reason),
            DenyCause::Policy,
        );
    }

    if conn.name.as_deref() == Some(crate::deny::routes::HOST) {
        return crate::local_api::serve(agent.clone(), conn.sandbox.clone(), stream).await;
    }

    // What the client says it is talking to, read before any dial.
    let prefix = match read_prefix(&mut stream).await {
        Ok(prefix) => prefix,
        Err(e) => {
            log::debug!(
                "sandbox {}: client went away before speaking: {e}",
                conn.sandbox
            );
            return;
        }
    };
    // Read once: the claimed host, and whether the client speaks TLS or
    // HTTP (then a refusal can be answered in-band, contract §2.2).
    let sniffed = sniff::sniff_final(&prefix);
    if sniff::is_oversized_http_head(&sniffed, &prefix) {
        let reason = format!(
            "the request head is larger than {} KiB",
            sniff::MAX_SNIFF / 1024
        );
        let answer =
            DenyResponse::error(ErrorKind::RequestHeaderFieldsTooLarge, &reason).to_http1();
        record_denial(&agent, with_reason(facts, reason), DenyCause::Policy);
        return answer_and_linger(stream, &answer).await;
    }
    let claimed = claimed_host(&sniffed, &prefix);
    let web = l7::speaks_http(&sniffed);
    if let (Some(name), Some(claimed)) = (&conn.name, claimed.clone()) {
        match claimed {
            Err(problem) => {
                return deny(
                    &agent,
                    stream,
                    with_reason(facts, problem),
                    DenyCause::Policy,
                );
            }
            Ok((what, host)) if sniff::normalize_host(&host) != *name => {
                let reason = format!(
                    "{what} '{host}' does not match the name the workload resolved ('{name}')"
                );
                return deny(
                    &agent,
                    stream,
                    with_reason(facts, reason),
                    DenyCause::Policy,
                );
            }
            Ok(_) => {}
        }
    }

    let question = Question {
        hostnames: conn.name.iter().cloned().collect(),
        ip: conn.dst.ip(),
        port: conn.dst.port(),
        binaries: identity.binary_paths().map(|p| p.to_path_buf()).collect(),
    };
    // The name certificates and upstream TLS use: the resolved name, or for
    // a direct-IP connect the name the client gives (the decision itself
    // stays on the IP).
    let host = conn
        .name
        .clone()
        .or_else(|| {
            claimed
                .and_then(Result::ok)
                .map(|(_, h)| sniff::normalize_host(&h))
        })
        .unwrap_or_else(|| conn.dst.ip().to_string());
    let binary = question.binaries.first().map(|p| p.display().to_string());
    let allow = match question.ask(&conn.snapshot) {
        L4Decision::Deny { reason } => {
            let responder =
                l7::l4_responder(None, reason.clone(), host.clone(), conn.dst.port(), binary);
            return refuse_with(
                &agent,
                stream,
                prefix,
                web,
                host,
                with_reason(facts, reason),
                DenyCause::Policy,
                responder,
            );
        }
        L4Decision::Allow(allow) => allow,
    };
    let facts = ConnectionFacts {
        policy: Some(allow.rule.clone()),
        ..facts
    };

    // Resolve only now: a name no policy allows never reaches upstream DNS.
    let resolved = match &conn.name {
        Some(name) => match agent.resolver.resolve(name).await {
            Ok(addrs) => {
                // Per connection, so debug: at info it was a stderr write
                // on every connect (the audit log has the decision). Its
                // own target lets tests see which names went upstream.
                log::debug!(
                    target: "portcullis::dns",
                    "sandbox {}: resolved {name} for rule {}: {addrs:?}",
                    conn.sandbox,
                    allow.rule
                );
                addrs
            }
            Err(e) => {
                let reason = format!("cannot resolve {name}: {e}");
                log::info!("sandbox {}: {reason}", conn.sandbox);
                agent.audit.log(
                    NetworkActivity::denied(&with_reason(facts, reason), DenyCause::Policy).into(),
                );
                refuse(stream);
                return;
            }
        },
        None => vec![conn.dst.ip()],
    };
    let permitted = match ssrf::permitted_addresses(&allow.endpoint, conn.dst.port(), &resolved) {
        Ok(permitted) => permitted,
        Err(denial) => {
            let kind = match denial {
                ssrf::SsrfDenial::NotInAllowedIps { .. } => SsrfKind::AllowedIpsCheckFailed,
                _ => SsrfKind::InternalAddress,
            };
            let detail = format!(
                "CONNECT {host}:{} blocked: {}",
                conn.dst.port(),
                kind.as_str()
            );
            let responder = l7::error_responder(ErrorKind::SsrfDenied, detail);
            let facts = with_reason(facts, denial.to_string());
            return refuse_with(
                &agent,
                stream,
                prefix,
                web,
                host,
                facts,
                DenyCause::Ssrf(kind),
                responder,
            );
        }
    };

    // An endpoint with L7 rules is inspected: TLS terminated, each request
    // decided. `tls: skip` and plain L4 endpoints are relayed as bytes.
    let matches = {
        let binaries: Vec<&std::path::Path> =
            question.binaries.iter().map(PathBuf::as_path).collect();
        conn.snapshot.policy.matching_endpoints(&L4Request {
            hostnames: &question.hostnames,
            ip: question.ip,
            port: question.port,
            binaries: &binaries,
        })
    };
    let inspect = matches.iter().any(|m| m.endpoint.l7.is_some())
        && !matches.iter().any(|m| m.endpoint.summary.tls_skip);
    drop(matches);
    if inspect {
        let Some(tls) = web else {
            // Nothing sent (a client that closed at once, or waits for the
            // server) is told apart from an unknown protocol in the log.
            let reason = if prefix.is_empty() {
                "the client sent nothing before closing or the sniff deadline; \
                 an endpoint with HTTP rules needs TLS or HTTP/1"
            } else {
                "an endpoint with HTTP rules received a protocol that is not TLS or HTTP/1"
            }
            .to_string();
            return deny(
                &agent,
                stream,
                with_reason(facts, reason),
                DenyCause::Policy,
            );
        };
        let facts = ConnectionFacts {
            dst_ip: permitted.first().copied(),
            ..facts
        };
        agent
            .audit
            .log(NetworkActivity::allowed(&facts, Inspection::L7).into());
        let session = l7::Session {
            agent: agent.clone(),
            facts,
            host,
            ip: question.ip,
            port: question.port,
            binaries: question.binaries,
            policy: conn.policy_rx,
            snapshot: conn.snapshot.clone(),
            tls,
        };
        agent
            .stats
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        l7::serve(session, stream, prefix, permitted).await;
        agent
            .stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        return;
    }

    // A host the sandbox holds credentials for is reached only through
    // inspection, where placeholders are checked; a raw tunnel could carry
    // them anywhere. The endpoint may opt out explicitly.
    if !allow.endpoint.allow_uninspected_credentials
        && let Some(provider) = credential_provider_for(&agent, &conn.sandbox, &host, question.port)
    {
        let detail = format!(
            "{host}:{} carries credentials of provider '{provider}' and must be inspected: give the endpoint `protocol: rest` (without `tls: skip`), or set `allow_uninspected_credentials: true`",
            question.port
        );
        let responder = l7::error_responder(ErrorKind::UninspectedCredentials, detail.clone());
        return refuse_with(
            &agent,
            stream,
            prefix,
            web,
            host,
            with_reason(facts, detail),
            DenyCause::UninspectedCredentials,
            responder,
        );
    }
    let facts = ConnectionFacts {
        dst_ip: permitted.first().copied(),
        ..facts
    };
    agent
        .audit
        .log(NetworkActivity::allowed(&facts, Inspection::L4Only).into());
    let mut upstream = match dial_first(&permitted, conn.dst.port(), agent.config.self_mark).await {
        Ok(upstream) => upstream,
        Err(e) => {
            log::info!(
                "sandbox {}: no address of {} answered: {e}",
                conn.sandbox,
                facts.dst_host.as_deref().unwrap_or("?")
            );
            refuse(stream);
            return;
        }
    };
    if !prefix.is_empty() && upstream.write_all(&prefix).await.is_err() {
        refuse(stream);
        return;
    }

    agent
        .stats
        .connections_active
        .fetch_add(1, Ordering::Relaxed);
    let withdrawn: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = conn
        .policy_rx
        .map(|rx| until_withdrawn(rx, question, withdrawn.clone()));
    let stop = async move {
        match stop {
            Some(stop) => stop.await,
            None => std::future::pending().await,
        }
    };
    let result = relay::relay(stream, upstream, agent.config.relay, stop).await;
    agent
        .stats
        .connections_active
        .fetch_sub(1, Ordering::Relaxed);
    let reason = withdrawn.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (result, reason) {
        (_, Some(reason)) => {
            log::info!(
                "sandbox {}: closed relay to {}: {reason}",
                conn.sandbox,
                conn.dst
            );
            agent
                .audit
                .log(NetworkActivity::closed_after_reload(&with_reason(facts, reason)).into());
        }
        (Err(e), None) => log::debug!("relay to {} ended: {e}", conn.dst),
        (Ok(_), None) => {}
    }
}

/// Completes when a reload produces a snapshot that denies `question`,
/// leaving the reason in `reason`.
async fn until_withdrawn(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    question: Question,
    reason: Arc<Mutex<Option<String>>>,
) {
    loop {
        if rx.changed().await.is_err() {
            // The sandbox is gone (its processes were killed with it).
            return std::future::pending().await;
        }
        let snapshot = rx.borrow_and_update().clone();
        if let L4Decision::Deny { reason: why } = question.ask(&snapshot) {
            *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "policy version {} no longer allows it: {why}",
                snapshot.version
            ));
            return;
        }
    }
}

/// The first of `addrs` that answers, or why the last did not.
async fn dial_first(addrs: &[IpAddr], port: u16, mark: u32) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no addresses to dial");
    for ip in addrs {
        match upstream::dial(SocketAddr::new(*ip, port), mark).await {
            Ok(stream) => return Ok(stream),
            Err(e) if upstream::AtDescriptorReserve::is(&e) => return Err(e),
            Err(e) => {
                log::debug!("dial {ip}:{port}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// Reads what the client sends first, until it is clearly a TLS
/// ClientHello, an HTTP request head, or neither. The bytes are replayed
/// to the upstream before relaying.
async fn read_prefix(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + SNIFF_DEADLINE;
    loop {
        // A hello or request head arrives in a burst; a pause this long
        // means the client is waiting for the server (an opaque protocol).
        let wait =
            FIRST_BYTES_WAIT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let n = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Err(_) => return Ok(buf), // Silent client or slow head: decide without it.
            Ok(read) => read?,
        };
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= sniff::MAX_SNIFF || !matches!(sniff::sniff(&buf), sniff::Sniffed::NeedMore)
        {
            return Ok(buf);
        }
    }
}

/// The host a client names in its first bytes: ("TLS SNI" | "HTTP Host",
/// host), an error for a hello or request that cannot be read (a lenient
/// server might still find a host in it), or None when the client names
/// nothing (silent, opaque protocols, h2c).
fn claimed_host(
    sniffed: &sniff::Sniffed,
    prefix: &[u8],
) -> Option<Result<(&'static str, String), String>> {
    match sniffed {
        sniff::Sniffed::Tls { sni: Some(sni), .. } => Some(Ok(("TLS SNI", sni.clone()))),
        sniff::Sniffed::Http {
            host: sniff::HostHeader::One(host),
            ..
        } => Some(Ok(("HTTP Host", host.clone()))),
        sniff::Sniffed::Http {
            host: sniff::HostHeader::Conflicting,
            ..
        } => Some(Err(
            "the request names conflicting hosts (Host headers or target)".to_string(),
        )),
        // Unreadable but unmistakably TLS or HTTP: a lenient server might
        // still find a host in it. Anything else is an opaque protocol.
        sniff::Sniffed::Malformed if looks_like_tls_or_http(prefix) => Some(Err(
            "the TLS ClientHello or HTTP request head is malformed or incomplete".to_string(),
        )),
        _ => None,
    }
}

fn looks_like_tls_or_http(prefix: &[u8]) -> bool {
    let tls = prefix.len() >= 2 && prefix[0] == 0x16 && prefix[1] == 0x03;
    let http = prefix.windows(7).any(|w| w == b" HTTP/1") || prefix.starts_with(b"CONNECT ");
    tls || http
}

fn attribute(agent: &Agent, record: ConnectRecord) -> Attributed {
    let (view, identity) = agent.attribute(&record);
    let ip = addr_from_abi(&record.dst_addr);
    let synthetic = agent.pools.contains(ip);
    let sandbox_id = view.as_ref().map_or(0, |v| v.record.id);
    let name = synthetic
        .then(|| agent.pools.name_for(sandbox_id, ip, Instant::now()))
        .flatten();
    let policy_rx = view.as_ref().map(|v: &SandboxView| v.policy.subscribe());
    Attributed {
        sandbox: view
            .as_ref()
            .map(|s| s.record.name.to_string())
            .unwrap_or_else(|| "-".into()),
        // An unknown sandbox gets no policy: deny all.
        snapshot: policy_rx
            .as_ref()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_else(Snapshot::deny_all),
        policy_rx,
        identity: identity.map_err(|e| e.to_string()),
        record,
        dst: SocketAddr::new(ip, record.dst_port),
        stale_synthetic: synthetic && name.is_none(),
        name,
    }
}

fn facts_for(conn: &Attributed, src: Option<SocketAddr>) -> ConnectionFacts {
    ConnectionFacts {
        sandbox: conn.sandbox.clone(),
        process: Some(process_facts(&conn.record, conn.identity.as_ref().ok())),
        src,
        dst_host: conn.name.clone(),
        dst_ip: Some(conn.dst.ip()),
        dst_port: conn.dst.port(),
        protocol: if conn.record.protocol == IPPROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        policy_version: Some(conn.snapshot.version.to_string()),
        policy_hash: Some(conn.snapshot.hash.clone()),
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

fn with_reason(facts: ConnectionFacts, reason: String) -> ConnectionFacts {
    ConnectionFacts {
        reason: Some(reason),
        ..facts
    }
}

/// Denies and, for TLS or HTTP clients, answers with a body the agent can
/// act on; other protocols are reset.
#[allow(clippy::too_many_arguments)]
fn refuse_with(
    agent: &Arc<Agent>,
    stream: TcpStream,
    prefix: Vec<u8>,
    web: Option<bool>,
    host: String,
    facts: ConnectionFacts,
    cause: DenyCause,
    responder: l7::Responder,
) {
    let Some(tls) = web else {
        return deny(agent, stream, facts, cause);
    };
    Stats::bump(&agent.stats.connections_denied);
    log_denial(&facts);
    agent
        .audit
        .log(NetworkActivity::denied(&facts, cause).into());
    tokio::spawn(l7::answer_refusal(
        agent.clone(),
        stream,
        prefix,
        tls,
        host,
        responder,
    ));
}

fn log_denial(facts: &ConnectionFacts) {
    log::info!(
        "sandbox {}: denied {} -> {}:{}: {}",
        facts.sandbox,
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
}

fn deny(agent: &Agent, stream: TcpStream, facts: ConnectionFacts, cause: DenyCause) {
    record_denial(agent, facts, cause);
    refuse(stream);
}

/// Counts, logs and audits a connection refused.
fn record_denial(agent: &Agent, facts: ConnectionFacts, cause: DenyCause) {
    Stats::bump(&agent.stats.connections_denied);
    log_denial(&facts);
    agent
        .audit
        .log(NetworkActivity::denied(&facts, cause).into());
}

/// How long a refused client may go on sending after its answer.
const LINGER: Duration = Duration::from_secs(5);

/// Sends `answer` and closes gently: the write side is shut, then what the
/// client is still sending is read and dropped (for [`LINGER`] at most),
/// since closing with unread input sends a reset that can destroy the
/// answer before the client reads it.
async fn answer_and_linger(mut stream: TcpStream, answer: &[u8]) {
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
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

/// The provider whose credentials are bound to `host:port` in `sandbox`.
fn credential_provider_for(agent: &Agent, sandbox: &str, host: &str, port: u16) -> Option<String> {
    agent
        .providers()
        .credentials(sandbox)
        .iter()
        .find(|c| c.bindings.iter().any(|b| b.admits(host, port, "/")))
        .map(|c| c.provider.clone())
}
