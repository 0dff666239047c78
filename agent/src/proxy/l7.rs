//! HTTP after an L4 decision: TLS terminated with the local CA, every
//! request decided on its own, denials answered with the agent-readable
//! bodies of `crate::deny`.
//!
//! The client leg and the upstream leg speak the same protocol: the ALPN
//! the upstream accepts (from what the client offered) is the only one the
//! client is offered, so HTTP/2 (gRPC included) stays HTTP/2 end to end
//! and trailers pass through.

use std::{
    convert::Infallible,
    io,
    net::IpAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Mutex, watch},
};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::providers::placeholder::{self, RequestHead, ResolveError};
use crate::{
    audit::{
        ConnectionFacts, DenyCause, DetectionFinding, HttpActivity, HttpRequestFacts,
        NetworkActivity,
    },
    daemon::{Agent, policies::Snapshot},
    deny::{DenyResponse, ErrorKind, L4Denial, L7Denial},
    policy::L4Request,
    proxy::{
        http::{
            canonical::canonicalize,
            decide::{self, L7Outcome},
        },
        sniff,
    },
};

type Body = BoxBody<Bytes, hyper::Error>;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";
/// How long an HTTP/1.1 upstream connection may outlive its client's.
const UPSTREAM_GRACE: Duration = Duration::from_secs(5);
/// An HTTP/2 client that stops answering pings within this is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Request heads larger than this are answered 431.
const MAX_HEAD_BYTES: usize = super::sniff::MAX_SNIFF;

/// Everything a request decision needs, shared by the requests of one
/// connection.
pub struct Session {
    pub agent: Arc<Agent>,
    /// Facts of the connection, for events.
    pub facts: ConnectionFacts,
    /// The name the workload resolved (or the IP it dialled).
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    pub binaries: Vec<PathBuf>,
    /// The snapshot in force, followed across reloads.
    pub policy: Option<watch::Receiver<Arc<Snapshot>>>,
    pub snapshot: Arc<Snapshot>,
    pub tls: bool,
}

/// A client stream with the bytes already read put back in front.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                // Replayed: the sniff buffer need not live as long as the
                // connection (4 KiB each at 1,000 idle connections).
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How requests reach the upstream.
enum Upstream {
    /// HTTP/1.1 sends one request at a time.
    H1(Mutex<hyper::client::conn::http1::SendRequest<Incoming>>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

/// Whether the client's first bytes are something this layer can serve:
/// Some(true) for TLS, Some(false) for plain HTTP/1.
pub fn speaks_http(sniffed: &sniff::Sniffed) -> Option<bool> {
    match sniffed {
        sniff::Sniffed::Tls { .. } => Some(true),
        sniff::Sniffed::Http { .. } => Some(false),
        _ => None,
    }
}

/// Serves an inspected connection: terminates TLS (when `session.tls`),
/// dials one of `addrs`, and decides every request.
pub async fn serve(session: Session, client: TcpStream, prefix: Vec<u8>, addrs: Vec<IpAddr>) {
    let session = Arc::new(session);
    if !session.tls {
        let tcp = match dial(&session, &addrs).await {
            Ok(tcp) => tcp,
            Err(why) => return answer_unreachable(&session, client, prefix, why).await,
        };
        let client = Rewind::new(prefix, client);
        proxy_http(session, TokioIo::new(client), TokioIo::new(tcp), false).await;
        return;
    }
    // No CA, no inspection; never an uninspected tunnel instead. The
    // client cannot be told over TLS without a certificate: the refusal is
    // in the audit log (tls_termination_unavailable).
    let leaves = match session.agent.leaves.clone() {
        Some(leaves) => leaves,
        None => return refuse_tls(&session, "the local CA is unavailable".into()),
    };
    // Minted before any upstream dial: a CA failure costs the upstream nothing.
    if let Err(e) = leaves.certified_key(&session.host) {
        return refuse_tls(
            &session,
            format!("no certificate for {}: {e}", session.host),
        );
    }
    // Dialled before the client's handshake, so a failure can still be
    // answered in-band, over TLS with a leaf of our own.
    let tcp = match dial(&session, &addrs).await {
        Ok(tcp) => tcp,
        Err(why) => return answer_unreachable(&session, client, prefix, why).await,
    };
    let client = Rewind::new(prefix, client);
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client).await {
        Ok(start) => start,
        Err(e) => return log::debug!("client hello from {}: {e}", session.facts.sandbox),
    };
    let offered: Vec<Vec<u8>> = start
        .client_hello()
        .alpn()
        .map(|protocols| {
            protocols
                .filter(|p| *p == H2 || *p == H1)
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default();
    let offered_refs: Vec<&[u8]> = offered.iter().map(Vec::as_slice).collect();
    let connector = TlsConnector::from(session.agent.upstream_tls(&offered_refs));
    let server_name = match rustls::pki_types::ServerName::try_from(session.host.clone()) {
        Ok(name) => name,
        Err(_) => return log::info!("{}: not a name TLS can verify", session.host),
    };
    let upstream_tls = match connector.connect(server_name, tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            // Verification is never off: a bad upstream certificate ends here.
            log::info!(
                "sandbox {}: upstream TLS to {} failed: {e}",
                session.facts.sandbox,
                session.host
            );
            return;
        }
    };
    let negotiated = upstream_tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = negotiated.as_deref() == Some(H2);
    let alpn: Vec<&[u8]> = match &negotiated {
        Some(p) => vec![p.as_slice()],
        // An upstream without ALPN speaks HTTP/1.1.
        None if offered.iter().any(|p| p == H1) => vec![H1],
        None => vec![],
    };
    let config = match leaves.server_config_for(&session.host, &alpn) {
        Ok(config) => config,
        Err(e) => return log::warn!("{}: TLS server config: {e}", session.host),
    };
    let client_tls = match start.into_stream(config).await {
        Ok(tls) => tls,
        Err(e) => {
            return log::debug!(
                "sandbox {}: client TLS handshake: {e}",
                session.facts.sandbox
            );
        }
    };
    proxy_http(
        session,
        TokioIo::new(client_tls),
        TokioIo::new(upstream_tls),
        h2,
    )
    .await;
}

fn refuse_tls(session: &Session, reason: String) {
    log::warn!(
        "sandbox {}: TLS to {} refused: {reason}",
        session.facts.sandbox,
        session.host
    );
    let facts = ConnectionFacts {
        reason: Some(reason),
        ..session.facts.clone()
    };
    session
        .agent
        .audit
        .log(NetworkActivity::denied(&facts, DenyCause::TlsUnavailable).into());
}

/// Tells a client whose upstream could not be reached (refused, timed
/// out, or the agent at its descriptor reserve), instead of closing on it.
async fn answer_unreachable(
    session: &Session,
    client: TcpStream,
    prefix: Vec<u8>,
    why: std::io::Error,
) {
    let detail = if super::upstream::AtDescriptorReserve::is(&why) {
        why.to_string()
    } else {
        format!(
            "no address of {} answered on port {}",
            session.host, session.port
        )
    };
    answer_refusal(
        session.agent.clone(),
        client,
        prefix,
        session.tls,
        session.host.clone(),
        error_responder(ErrorKind::UpstreamUnreachable, detail),
    )
    .await;
}

async fn dial(session: &Session, addrs: &[IpAddr]) -> std::io::Result<TcpStream> {
    let stream = super::dial_first(addrs, session.port, session.agent.config.self_mark).await;
    if let Err(e) = &stream {
        log::info!(
            "sandbox {}: no address of {} answered: {e}",
            session.facts.sandbox,
            session.host
        );
    }
    stream
}

/// Serves a client connection against its own upstream connection. For
/// HTTP/1.1 both connections are driven by this one task, so a request and
/// its response cross no task (or thread) boundary on the way: `cargo
/// xtask bench` measured the spawned-connection version about a fifth
/// slower.
async fn proxy_http<C, U>(session: Arc<Session>, client: C, upstream: U, h2: bool)
where
    C: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    U: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (upstream, h1_connection) = if h2 {
        let Ok((sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), upstream).await
        else {
            return;
        };
        // HTTP/2 multiplexes: its streams run as tasks of their own, so
        // the connection does too (driving it from this task measured no
        // gain for h2).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (Upstream::H2(sender), None)
    } else {
        let Ok((sender, conn)) = hyper::client::conn::http1::handshake(upstream).await else {
            return;
        };
        (Upstream::H1(Mutex::new(sender)), Some(conn))
    };
    let upstream = Arc::new(upstream);
    let head_timeout = session.agent.config.http_head_timeout();
    let service = service_fn(move |req| {
        let session = session.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(session.handle(req, &upstream).await) }
    });
    let served = match h1_connection {
        // The upstream connection ends once the client side, and with it
        // the request sender, is gone.
        Some(conn) => {
            let mut upstream_side = std::pin::pin!(conn.with_upgrades());
            let mut serve = std::pin::pin!(serve_http(client, h2, head_timeout, service));
            let mut upstream_done = false;
            let served = loop {
                tokio::select! {
                    served = &mut serve => break served,
                    _ = &mut upstream_side, if !upstream_done => upstream_done = true,
                }
            };
            // Normally done at once: the request sender is gone. An
            // upgrade hands its stream over first; an upstream that never
            // answered a request (504) is dropped after the grace.
            if !upstream_done {
                let _ = tokio::time::timeout(UPSTREAM_GRACE, upstream_side).await;
            }
            served
        }
        None => serve_http(client, h2, head_timeout, service).await,
    };
    if let Err(e) = served {
        log::debug!("L7 connection ended: {e}");
    }
}

/// Serves one client connection with `service`, HTTP/2 or HTTP/1.1 (with
/// upgrades), under the same head-size limits on every path. An HTTP/1.1
/// client gets `head_timeout` to send each request head (the first was
/// already read by the sniffer, under its own deadline).
async fn serve_http<I, S>(
    io: I,
    h2: bool,
    head_timeout: Duration,
    service: S,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        // HTTP/2 has no head deadline; a peer that is gone (not merely
        // idle) is found by pings every `head_timeout`.
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(head_timeout)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(4 * MAX_HEAD_BYTES)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    }
}

/// Builds the answer to every request of a refused connection from its
/// method and path.
pub type Responder = Arc<dyn Fn(&str, &str) -> DenyResponse + Send + Sync>;

/// Answers an HTTP or TLS connection refused before any dial with an
/// agent-readable body (contract §2.2): TLS is terminated with a leaf for
/// `host`, each request read and answered. Nothing is dialled.
pub async fn answer_refusal(
    agent: Arc<Agent>,
    client: TcpStream,
    prefix: Vec<u8>,
    tls: bool,
    host: String,
    responder: Responder,
) {
    let client = Rewind::new(prefix, client);
    let deny = move |req: Request<Incoming>| {
        let responder = responder.clone();
        async move {
            let version = req.version();
            Ok::<_, Infallible>(respond(
                responder(req.method().as_str(), req.uri().path()),
                version,
            ))
        }
    };
    if !tls {
        let timeout = agent.config.http_head_timeout();
        let _ = serve_http(TokioIo::new(client), false, timeout, service_fn(deny)).await;
        return;
    }
    let Some(leaves) = agent.leaves.clone() else {
        return;
    };
    let Ok(start) = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client).await
    else {
        return;
    };
    let wants_h2 = start
        .client_hello()
        .alpn()
        .is_some_and(|mut p| p.any(|p| p == H2));
    let alpn: Vec<&[u8]> = if wants_h2 { vec![H2, H1] } else { vec![H1] };
    let Ok(config) = leaves.server_config_for(&host, &alpn) else {
        return;
    };
    let Ok(tls) = start.into_stream(config).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
    let timeout = agent.config.http_head_timeout();
    let _ = serve_http(TokioIo::new(tls), h2, timeout, service_fn(deny)).await;
}

/// The L4 body for a request on a refused connection.
pub fn l4_responder(
    policy: Option<String>,
    detail: String,
    host: String,
    port: u16,
    binary: Option<String>,
) -> Responder {
    Arc::new(move |method: &str, path: &str| {
        let path = canonicalize(path, false)
            .map(|t| t.path)
            .unwrap_or_else(|_| "/".to_string());
        DenyResponse::l4(&L4Denial {
            policy: policy.as_deref(),
            detail: &detail,
            method: Some(method),
            path: Some(&path),
            host: &host,
            port,
            binary: binary.as_deref(),
        })
    })
}

/// A fixed error body (SSRF, unsupported protocol, ...) for every request.
pub fn error_responder(kind: ErrorKind, detail: String) -> Responder {
    Arc::new(move |_: &str, _: &str| DenyResponse::error(kind, &detail))
}

/// A `DenyResponse` as a hyper response. An HTTP/1 connection is closed
/// after a denial (`Connection: close`), as OpenShell's are; HTTP/2 has no
/// connection header and keeps the other streams.
fn respond(deny: DenyResponse, version: hyper::Version) -> Response<Body> {
    let mut response = Response::new(full(deny.body.clone()));
    *response.status_mut() = StatusCode::from_u16(deny.status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    for (name, value) in &deny.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(*name),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    if version < hyper::Version::HTTP_2 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fields named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    let trailers_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name);
    }
    if !keep_upgrade {
        for name in named {
            headers.remove(name);
        }
    }
    // gRPC needs `te: trailers`.
    if trailers_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

impl Session {
    /// The request target to send (canonical, placeholders resolved), with
    /// the headers rewritten in place.
    fn resolve_credentials(
        &self,
        req: &mut Request<Incoming>,
        method: &str,
        target: &crate::proxy::http::canonical::Target,
    ) -> Result<String, ResolveError> {
        let origin = target.origin_form();
        let headers: Vec<(String, Vec<u8>)> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let credentials = self.agent.providers().credentials(&self.facts.sandbox);
        let head = RequestHead {
            scheme_is_tls: self.tls,
            method,
            host: &self.host,
            port: self.port,
            path: &target.path,
            target: &origin,
            headers: &headers,
        };
        let Some(rewritten) = placeholder::resolve(&head, &credentials)? else {
            return Ok(origin);
        };
        let mut map = HeaderMap::with_capacity(rewritten.headers.len());
        for (name, value) in rewritten.headers {
            // The resolver refused CR, LF and NUL; anything else hyper
            // rejects fails closed the same way.
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) else {
                return Err(ResolveError::LeftoverMarker {
                    location: "a header the proxy could not rebuild".into(),
                });
            };
            map.append(name, value);
        }
        *req.headers_mut() = map;
        Ok(rewritten.target)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match &self.policy {
            Some(rx) => rx.borrow().clone(),
            None => self.snapshot.clone(),
        }
    }

    fn binary(&self) -> Option<String> {
        self.binaries.first().map(|p| p.display().to_string())
    }

    fn event_facts(
        &self,
        rule: Option<&str>,
        reason: Option<String>,
        snapshot: &Snapshot,
    ) -> ConnectionFacts {
        ConnectionFacts {
            policy: rule.map(str::to_string),
            reason,
            policy_version: Some(snapshot.version.to_string()),
            policy_hash: Some(snapshot.hash.clone()),
            ..self.facts.clone()
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, upstream: &Upstream) -> Response<Body> {
        let version = req.version();
        let respond = |deny: DenyResponse| respond(deny, version);
        let method = req.method().as_str().to_string();
        let raw_target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        // Request smuggling: a length and a chunked body at once is refused.
        if req.headers().contains_key(header::CONTENT_LENGTH)
            && req.headers().contains_key(header::TRANSFER_ENCODING)
        {
            return respond(DenyResponse::error(
                ErrorKind::InvalidRequest,
                "the request has both Content-Length and Transfer-Encoding",
            ));
        }
        // Every request of a kept-alive connection names the same host,
        // in every place it names one: each Host header and the target's
        // (or HTTP/2 `:authority`) authority, which upstreams may prefer.
        let mut names = req
            .headers()
            .get_all(header::HOST)
            .iter()
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .chain(req.uri().authority().map(|a| a.as_str().to_string()));
        if let Some(named) = names.find(|n| sniff::normalize_host(n) != self.host) {
            return respond(DenyResponse::error(
                ErrorKind::InvalidRequest,
                &format!(
                    "the request names host '{}' on a connection to '{}'",
                    sniff::normalize_host(&named),
                    self.host
                ),
            ));
        }

        let snapshot = self.snapshot();
        let binaries: Vec<&std::path::Path> = self.binaries.iter().map(PathBuf::as_path).collect();
        let hostnames = [self.host.clone()];
        let l4 = L4Request {
            hostnames: &hostnames,
            ip: self.ip,
            port: self.port,
            binaries: &binaries,
        };
        let matches = snapshot.policy.matching_endpoints(&l4);
        let binary = self.binary();
        if matches.is_empty() {
            // A reload withdrew the connection's L4 permission.
            let detail = match snapshot.policy.evaluate_l4(&l4) {
                crate::policy::L4Decision::Deny { reason } => reason,
                crate::policy::L4Decision::Allow(_) => "not permitted by policy".into(),
            };
            let target = canonicalize(&raw_target, false).ok();
            return respond(DenyResponse::l4(&L4Denial {
                policy: None,
                detail: &detail,
                method: Some(&method),
                path: target.as_ref().map(|t| t.path.as_str()),
                host: &self.host,
                port: self.port,
                binary: binary.as_deref(),
            }));
        }
        let target = match canonicalize(&raw_target, decide::allow_encoded_slash(&matches)) {
            Ok(target) => target,
            Err(e) => {
                return respond(DenyResponse::error(
                    ErrorKind::InvalidRequestTarget,
                    &e.reason(),
                ));
            }
        };
        let request_facts = HttpRequestFacts {
            method: method.clone(),
            scheme: if self.tls { "https" } else { "http" }.into(),
            path: target.path.clone(),
        };
        let (rule, audit_reason) =
            match decide::decide(&matches, &method, &target.path, &target.params) {
                L7Outcome::Allow { rule } => (rule, None),
                L7Outcome::NotInspected => (matches[0].rule.key.clone(), None),
                L7Outcome::Audit { rule, reason } => (rule, Some(reason)),
                L7Outcome::Deny { rule, reason } => {
                    let facts = self.event_facts(Some(&rule), Some(reason.clone()), &snapshot);
                    self.agent
                        .audit
                        .log(HttpActivity::denied(&facts, &request_facts).into());
                    return respond(DenyResponse::l7(&L7Denial {
                        policy: &rule,
                        detail: &reason,
                        method: &method,
                        path: &target.path,
                        host: Some(&self.host),
                        port: Some(self.port),
                        binary: binary.as_deref(),
                    }));
                }
            };
        // Placeholders become secrets only now, after the policy admitted
        // the request, and only toward the hosts they are bound to.
        let origin = match self.resolve_credentials(&mut req, &method, &target) {
            Ok(origin) => origin,
            Err(e) => {
                let facts = self.event_facts(Some(&rule), Some(e.message()), &snapshot);
                if let ResolveError::EndpointMismatch { key, provider } = &e {
                    self.agent.audit.log(
                        DetectionFinding::credential_endpoint_mismatch(&facts, key, provider)
                            .into(),
                    );
                }
                self.agent
                    .audit
                    .log(HttpActivity::denied(&facts, &request_facts).into());
                let kind = match &e {
                    ResolveError::EndpointMismatch { .. }
                    | ResolveError::PlainHttp { .. }
                    | ResolveError::EchoMethod { .. } => ErrorKind::CredentialEndpointMismatch,
                    ResolveError::Unavailable { .. } | ResolveError::InvalidSecret { .. } => {
                        ErrorKind::CredentialUnavailable
                    }
                    ResolveError::LeftoverMarker { .. } => ErrorKind::InvalidCredentialPlaceholder,
                };
                return respond(DenyResponse::error(kind, &e.message()));
            }
        };
        let facts = self.event_facts(Some(&rule), audit_reason.clone(), &snapshot);
        let event = match audit_reason {
            Some(_) => HttpActivity::audited(&facts, &request_facts),
            None => HttpActivity::allowed(&facts, &request_facts),
        };
        self.agent.audit.log(event.into());

        // Forward the canonical form.
        let websocket = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let uri = match upstream {
            Upstream::H1(_) => origin.parse(),
            Upstream::H2(_) => {
                let authority = if (self.tls && self.port == 443) || (!self.tls && self.port == 80)
                {
                    self.host.clone()
                } else {
                    format!("{}:{}", self.host, self.port)
                };
                format!(
                    "{}://{authority}{origin}",
                    if self.tls { "https" } else { "http" }
                )
                .parse()
            }
        };
        match uri {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return respond(DenyResponse::error(ErrorKind::InvalidRequestTarget, "")),
        }
        strip_hop_by_hop(req.headers_mut(), websocket);
        let exchange = async {
            match upstream {
                Upstream::H1(sender) => {
                    let mut sender = sender.lock().await;
                    match sender.ready().await {
                        Ok(()) => sender.send_request(req).await,
                        Err(e) => Err(e),
                    }
                }
                Upstream::H2(sender) => sender.clone().send_request(req).await,
            }
        };
        let timeout = self.agent.config.upstream_response_timeout();
        let Ok(response) = tokio::time::timeout(timeout, exchange).await else {
            // The HTTP/1.1 client connection closes (`respond`), and with
            // it the upstream one, whose state is unknown now.
            log::info!(
                "sandbox {}: upstream {} sent no response head in {}s",
                self.facts.sandbox,
                self.host,
                timeout.as_secs()
            );
            return respond(DenyResponse::error(ErrorKind::UpstreamTimeout, ""));
        };
        let mut response = match response {
            Ok(response) => response,
            Err(e) => {
                log::info!(
                    "sandbox {}: upstream {} failed: {e}",
                    self.facts.sandbox,
                    self.host
                );
                return respond(DenyResponse::error(ErrorKind::UpstreamUnreachable, ""));
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            // After the upgrade, frames are relayed as they come.
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
        } else {
            strip_hop_by_hop(response.headers_mut(), false);
        }
        response.map(|body| body.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello".to_vec(), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded_but_trailers_te_is() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic abc"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get(header::ACCEPT).unwrap(), "*/*");
    }

    #[test]
    fn websocket_upgrades_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
    }

    #[test]
    fn denials_close_http1_connections_only() {
        let deny = DenyResponse::error(ErrorKind::InvalidRequest, "x");
        let h1 = respond(deny.clone(), hyper::Version::HTTP_11);
        assert_eq!(h1.status(), StatusCode::BAD_REQUEST);
        assert_eq!(h1.headers().get(header::CONNECTION).unwrap(), "close");
        let h2 = respond(deny, hyper::Version::HTTP_2);
        assert!(h2.headers().get(header::CONNECTION).is_none());
    }
}
