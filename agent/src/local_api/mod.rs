//! `policy.local`: the sandbox-local API (reference §4, contract §1–2),
//! answered by the agent itself on the reserved address its DNS gives
//! every sandbox for that name. Each connection is attributed to its
//! sandbox by cgroup before it gets here, so a sandbox only ever sees its
//! own policy, denials and chunks.

pub mod denials;
pub mod rate;

use std::{
    convert::Infallible,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::{
    daemon::{
        Agent, Stats,
        drafts::{self, OpError},
    },
    deny::routes,
    drafts::{Chunk, ChunkStatus, engine, proposal},
};

/// The skill text, built into the agent so every sandbox gets the same one.
pub const SKILL: &str = include_str!("../../../skills/policy_advisor.md");

/// Reading a request body gives up after this long (contract §2.4).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// `/wait?timeout=`: default and clamp, in seconds (reference §4.2).
const WAIT_DEFAULT_SECS: u64 = 60;
const WAIT_MAX_SECS: u64 = 300;
/// After an approval, how long `/wait` gives the reload at least.
const RELOAD_GRACE: Duration = Duration::from_millis(500);

/// Writes the skill where agents look for it (mode 0444), replacing an
/// older copy atomically.
pub fn install_skill(dirs: &[impl AsRef<Path>]) -> anyhow::Result<()> {
    use anyhow::Context;
    for dir in dirs {
        let path = dir.as_ref().join("policy_advisor.md");
        crate::sandbox::registry::write_atomic(&path, SKILL.as_bytes(), 0o444)
            .with_context(|| format!("installing the skill at {}", path.display()))?;
    }
    Ok(())
}

type Reply = Response<Full<Bytes>>;

fn response(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // One request per connection, as OpenShell answers.
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    response(status, "application/json", body.to_string())
}

fn error(status: StatusCode, code: &str, detail: &str) -> Reply {
    json_reply(status, &json!({ "error": code, "detail": detail }))
}

/// 429 with `Retry-After` (whole seconds, rounded up).
fn rate_limited(wait: Duration) -> Reply {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut reply = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!(
            "more than {} proposals in a burst (one more every {} s); retry in {seconds} s, \
             and combine related rules into one proposal",
            rate::BURST,
            rate::REFILL_EVERY.as_secs()
        ),
    );
    reply
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    reply
}

/// Where a request goes: (method, path before `?`) matched exactly.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Skill,
    CurrentPolicy,
    Providers,
    Denials,
    Submit,
    Chunk(&'a str),
    Wait(&'a str),
    /// Under `/v1/proposals/` but not a route: empty id, extra segments.
    BadProposalPath,
    NotFound,
}

fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    let get = method == "GET" || method == "HEAD";
    match (get, method, path) {
        (true, _, routes::SKILL) => Route::Skill,
        (true, _, "/v1/policy/current") => Route::CurrentPolicy,
        (true, _, "/v1/denials") => Route::Denials,
        (true, _, "/v1/providers") => Route::Providers,
        (_, "POST", "/v1/proposals") => Route::Submit,
        (true, _, p) if p.starts_with("/v1/proposals/") => {
            let rest = &p["/v1/proposals/".len()..];
            match rest.split('/').collect::<Vec<_>>().as_slice() {
                [id] if !id.is_empty() => Route::Chunk(id),
                [id, "wait"] if !id.is_empty() => Route::Wait(id),
                _ => Route::BadProposalPath,
            }
        }
        _ => Route::NotFound,
    }
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `/wait?timeout=`: default 60 s, clamped to 1..=300, unparsable -> 60.
fn wait_timeout(query: Option<&str>) -> Duration {
    let secs = query_param(query, "timeout")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(WAIT_DEFAULT_SECS, |s| s.clamp(1, WAIT_MAX_SECS));
    Duration::from_secs(secs)
}

/// The chunk-state payload (reference §4.3). `policy_reloaded` is present
/// only for approved chunks; `timed_out` only when a wait ran out.
pub fn chunk_payload(chunk: &Chunk, policy_reloaded: bool, timed_out: bool) -> Value {
    let mut v = json!({
        "chunk_id": chunk.id,
        "status": chunk.status.as_str(),
        "rule_name": chunk.rule_name,
        "binary": chunk.binary,
        "rejection_reason": chunk.rejection_reason,
        "validation_result": chunk.validation_result,
        "application_error": chunk.application_error,
        "review_token": chunk.review_token,
        "current_effective_policy_hash": chunk.current_effective_policy_hash,
        "candidate_effective_policy_hash": chunk.candidate_effective_policy_hash,
    });
    if timed_out {
        v["timed_out"] = json!(true);
    }
    if chunk.status == ChunkStatus::Approved {
        v["policy_reloaded"] = json!(policy_reloaded);
    }
    v
}

/// Serves one connection to `policy.local` for `sandbox` (plain HTTP/1.1,
/// origin-form or absolute-form targets alike).
pub async fn serve(agent: Arc<Agent>, sandbox: String, stream: TcpStream) {
    // The proxy's head deadline, capped at the body's.
    let head_timeout = agent.config.http_head_timeout().min(BODY_READ_TIMEOUT);
    let service = service_fn(move |req: Request<Incoming>| {
        let agent = agent.clone();
        let sandbox = sandbox.clone();
        async move { Ok::<_, Infallible>(answer(&agent, &sandbox, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .keep_alive(false)
        .header_read_timeout(head_timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("policy.local connection: {e}");
    }
}

async fn answer(agent: &Agent, sandbox: &str, req: Request<Incoming>) -> Reply {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    match route(&method, &path) {
        Route::Skill => response(
            StatusCode::OK,
            "text/markdown; charset=utf-8",
            SKILL.to_string(),
        ),
        Route::CurrentPolicy => current_policy(agent, sandbox),
        Route::Providers => providers(agent, sandbox),
        Route::Denials => {
            let dir = crate::audit::writer::sandbox_log_dir(&agent.config.log_dir, sandbox);
            let last = denials::parse_last(query.as_deref());
            let found =
                tokio::task::spawn_blocking(move || denials::read_denials(&dir, last)).await;
            match found {
                Ok(d) => json_reply(StatusCode::OK, &json!(d)),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "denials_unavailable",
                    &e.to_string(),
                ),
            }
        }
        Route::Submit => {
            // Checked before the body is read: a flood costs the agent
            // as little as possible.
            let admitted = agent
                .proposal_limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(sandbox, Instant::now());
            if let Err(wait) = admitted {
                Stats::bump(&agent.stats.proposals_rate_limited);
                return rate_limited(wait);
            }
            match read_body(req, BODY_READ_TIMEOUT).await {
                Ok(body) => submit(agent, sandbox, &body).await,
                Err(reply) => reply,
            }
        }
        Route::Chunk(id) => match drafts::chunk(agent, sandbox, id).await {
            Ok(Some(chunk)) => json_reply(StatusCode::OK, &chunk_payload(&chunk, false, false)),
            Ok(None) => chunk_not_found(id),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "chunk_lookup_failed",
                &format!("{e:#}"),
            ),
        },
        Route::Wait(id) => wait(agent, sandbox, id, wait_timeout(query.as_deref())).await,
        Route::BadProposalPath => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "proposal sub-route not found; use /v1/proposals/{id} or /v1/proposals/{id}/wait",
        ),
        Route::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("policy.local route not found: {method} {path}"),
        ),
    }
}

fn chunk_not_found(id: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "chunk_not_found",
        &format!("no proposal chunk `{id}` in this sandbox"),
    )
}

/// `GET /v1/providers`: attached providers with their credential key
/// names (the placeholders' keys), never values.
fn providers(agent: &Agent, sandbox: &str) -> Reply {
    let cache = agent.providers();
    let list: Vec<Value> = cache
        .attached_names(sandbox)
        .iter()
        .filter_map(|name| cache.provider(name))
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.provider_type,
                "credential_keys": p.credentials.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    json_reply(StatusCode::OK, &json!({ "providers": list }))
}

fn current_policy(agent: &Agent, sandbox: &str) -> Reply {
    let Some(view) = agent.sandbox(sandbox) else {
        return error(
            StatusCode::NOT_FOUND,
            "policy_unavailable",
            "this sandbox is no longer registered",
        );
    };
    let snapshot = view.snapshot();
    if snapshot.version == 0 {
        return error(
            StatusCode::NOT_FOUND,
            "policy_unavailable",
            "no policy is loaded for this sandbox, so all egress is denied; propose rules with POST /v1/proposals",
        );
    }
    json_reply(
        StatusCode::OK,
        &json!({ "format": "yaml", "policy_yaml": engine::policy_yaml(&snapshot.policy) }),
    )
}

/// Reads a request body of at most `proposal::MAX_BODY_BYTES` within the
/// read timeout; chunked bodies are fine.
async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, Reply> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!(
                "the body is over {} bytes; send fewer or smaller operations",
                proposal::MAX_BODY_BYTES
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > proposal::MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), proposal::MAX_BODY_BYTES);
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body did not arrive within 15 s; send it in one go",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_proposal",
            &format!("the body could not be read: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn submit(agent: &Agent, sandbox: &str, body: &[u8]) -> Reply {
    let proposal = match proposal::parse(body) {
        Ok(p) => p,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "invalid_proposal", &detail),
    };
    match drafts::submit(agent, sandbox, &proposal).await {
        Ok(reply) => json_reply(StatusCode::ACCEPTED, &json!(reply)),
        Err(OpError::Draft(e)) => {
            error(StatusCode::BAD_REQUEST, "invalid_proposal", &e.to_string())
        }
        Err(OpError::Internal(e)) => {
            log::error!("sandbox {sandbox}: proposal not stored: {e:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "proposal_submit_failed",
                "the proposal could not be stored; retry later",
            )
        }
    }
}

/// Long poll until the chunk is decided or the timeout passes. An
/// approval is reported once the loaded policy covers the rule.
async fn wait(agent: &Agent, sandbox: &str, id: &str, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    // Subscribe before the first read, so no decision slips in between.
    let mut updates = agent.drafts.subscribe();
    loop {
        let chunk = match drafts::chunk(agent, sandbox, id).await {
            Ok(Some(c)) => c,
            Ok(None) => return chunk_not_found(id),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "chunk_lookup_failed",
                    &format!("{e:#}"),
                );
            }
        };
        match chunk.status {
            ChunkStatus::Approved => {
                let reloaded = wait_for_coverage(agent, sandbox, &chunk, deadline).await;
                return json_reply(StatusCode::OK, &chunk_payload(&chunk, reloaded, false));
            }
            ChunkStatus::Rejected => {
                return json_reply(StatusCode::OK, &chunk_payload(&chunk, false, false));
            }
            ChunkStatus::Pending => {}
        }
        let next = async {
            loop {
                match updates.recv().await {
                    Ok(u) if u.sandbox == sandbox && u.chunk.id == id => return,
                    Ok(_) => {}
                    // Missed some: re-read the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        if tokio::time::timeout_at(deadline.into(), next)
            .await
            .is_err()
        {
            return json_reply(StatusCode::OK, &chunk_payload(&chunk, false, true));
        }
    }
}

/// True once the sandbox's loaded policy covers the chunk's rule, waiting
/// for reloads until the deadline (at least the reload grace).
async fn wait_for_coverage(agent: &Agent, sandbox: &str, chunk: &Chunk, deadline: Instant) -> bool {
    let Some(view) = agent.sandbox(sandbox) else {
        return false;
    };
    if let Some(req) = &chunk.provider_request {
        // Attachment and the recomposed policy go live together.
        return agent
            .providers()
            .attached_names(sandbox)
            .contains(&req.name);
    }
    let mut rx = view.policy.subscribe();
    let rule = engine::proposed(chunk);
    let deadline = deadline.max(Instant::now() + RELOAD_GRACE);
    loop {
        if crate::policy::merge::covers(&rx.borrow_and_update().policy, &rule) {
            return true;
        }
        match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_method_and_path_exactly() {
        assert_eq!(route("GET", "/v1/skill"), Route::Skill);
        assert_eq!(route("HEAD", "/v1/policy/current"), Route::CurrentPolicy);
        assert_eq!(route("GET", "/v1/denials"), Route::Denials);
        assert_eq!(route("POST", "/v1/proposals"), Route::Submit);
        assert_eq!(route("GET", "/v1/proposals/abc"), Route::Chunk("abc"));
        assert_eq!(route("GET", "/v1/proposals/abc/wait"), Route::Wait("abc"));
        for bad in [
            "/v1/proposals/",
            "/v1/proposals//wait",
            "/v1/proposals/a/b/c",
            "/v1/proposals/a/stop",
        ] {
            assert_eq!(route("GET", bad), Route::BadProposalPath, "{bad}");
        }
        assert_eq!(route("POST", "/v1/skill"), Route::NotFound);
        assert_eq!(route("GET", "/v1/proposals"), Route::NotFound);
        assert_eq!(route("DELETE", "/v1/proposals/abc"), Route::NotFound);
        assert_eq!(route("GET", "/v2/policy/current"), Route::NotFound);
    }

    #[test]
    fn wait_timeout_defaults_and_clamps() {
        let secs = |q: Option<&str>| wait_timeout(q).as_secs();
        assert_eq!(secs(None), 60);
        assert_eq!(secs(Some("timeout=5")), 5);
        assert_eq!(secs(Some("x=1&timeout=0")), 1);
        assert_eq!(secs(Some("timeout=9999")), 300);
        assert_eq!(secs(Some("timeout=soon")), 60);
        assert_eq!(secs(Some("timeout")), 60);
    }

    fn chunk(status: ChunkStatus) -> Chunk {
        serde_json::from_value(json!({
            "id": "c-1", "sandbox": "sb", "status": status.as_str(), "rule_name": "r",
            "proposed_rule": {}, "rationale": "", "confidence": 0.75, "stage": "agent",
            "analysis_mode": "agent_authored", "binary": "/usr/bin/curl", "hit_count": 1,
            "created_at_ms": 1, "first_seen_ms": 1, "last_seen_ms": 1, "decided_at_ms": null,
            "validation_result": "prover: no new findings", "rejection_reason": "",
            "application_error": "", "review_token": "t", "current_effective_policy_hash": "a",
            "candidate_effective_policy_hash": "b", "current_effective_policy": "",
            "candidate_effective_policy": "", "grant": null, "approved_policy_version": null
        }))
        .unwrap()
    }

    #[test]
    fn chunk_payload_has_the_reference_fields() {
        let pending = chunk_payload(&chunk(ChunkStatus::Pending), true, true);
        let keys: Vec<&str> = pending
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "chunk_id",
            "status",
            "rule_name",
            "binary",
            "rejection_reason",
            "validation_result",
            "application_error",
            "review_token",
            "current_effective_policy_hash",
            "candidate_effective_policy_hash",
            "timed_out",
        ] {
            assert!(keys.contains(&k), "{k} missing");
        }
        assert!(
            pending.get("policy_reloaded").is_none(),
            "only approved chunks say"
        );
        let approved = chunk_payload(&chunk(ChunkStatus::Approved), true, false);
        assert_eq!(approved["policy_reloaded"], true);
        assert!(approved.get("timed_out").is_none());
    }

    /// Serves one connection whose handler only reads the body: 200 with
    /// the body's length, or read_body's own error reply.
    async fn body_server(timeout: Duration) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(match read_body(req, timeout).await {
                    Ok(body) => response(StatusCode::OK, "text/plain", body.len().to_string()),
                    Err(reply) => reply,
                })
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        addr
    }

    /// Sends `request` and keeps the connection open; returns the status
    /// line and the body of the answer (read to its Content-Length).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    let status = head.lines().next().unwrap_or_default().to_string();
                    return (status, body.to_string());
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a full answer: {text}");
            answer.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn chunked_bodies_are_read_and_limited() {
        let addr = body_server(Duration::from_secs(5)).await;
        let (status, body) = exchange(
            addr,
            b"POST /v1/proposals HTTP/1.1\r\nHost: policy.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "11");

        let addr = body_server(Duration::from_secs(5)).await;
        let chunk = "x".repeat(40 * 1024);
        let request = format!(
            "POST /v1/proposals HTTP/1.1\r\nHost: policy.local\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
            len = chunk.len()
        );
        let (status, body) = exchange(addr, request.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
        assert!(body.contains("payload_too_large"), "{body}");
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
        let addr = body_server(Duration::from_secs(5)).await;
        let (status, _) = exchange(
            addr,
            b"POST /v1/proposals HTTP/1.1\r\nHost: policy.local\r\nContent-Length: 1000000\r\n\r\n{",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    }

    #[tokio::test]
    async fn a_slow_body_times_out_with_408() {
        let addr = body_server(Duration::from_millis(200)).await;
        let (status, body) = exchange(
            addr,
            b"POST /v1/proposals HTTP/1.1\r\nHost: policy.local\r\nContent-Length: 100\r\n\r\n{\"operations\"",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 408 Request Timeout");
        assert!(body.contains("request_timeout"), "{body}");
    }

    #[test]
    fn the_skill_is_installed_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("openshell");
        let b = dir.path().join("portcullis");
        install_skill(&[&a, &b]).unwrap();
        install_skill(&[&a]).unwrap();
        for d in [a, b] {
            let path = d.join("policy_advisor.md");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), SKILL);
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o444
            );
        }
    }
}
