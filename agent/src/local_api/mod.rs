//! `policy.local`: the sandbox-local API, answered by the agent itself on
//! the reserved address its DNS gives every sandbox for that name.
//!
//! Served now: `GET /v1/skill`. The policy, denials and proposal routes
//! come with the approval loop; until then they answer a structured 503.

use std::{convert::Infallible, path::Path};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::deny::routes;

/// The skill text, built into the agent so every sandbox gets the same one.
pub const SKILL: &str = include_str!("../../../skills/policy_advisor.md");

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

/// What `policy.local` answers to one request.
pub fn answer(method: &str, path: &str) -> Response<Full<Bytes>> {
    let path = path.split('?').next().unwrap_or(path);
    if path == routes::SKILL {
        return if method == "GET" || method == "HEAD" {
            response(
                StatusCode::OK,
                "text/markdown; charset=utf-8",
                SKILL.to_string(),
            )
        } else {
            json(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            )
        };
    }
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_local_unavailable",
        "this agent does not serve the policy, denials and proposal routes yet",
    )
}

fn json(status: StatusCode, error: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": error, "detail": detail }).to_string();
    response(status, "application/json", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves one connection to `policy.local` (plain HTTP/1.1, origin-form or
/// absolute-form targets alike).
pub async fn serve(stream: TcpStream) {
    let service = service_fn(|req: Request<Incoming>| async move {
        Ok::<_, Infallible>(answer(req.method().as_str(), req.uri().path()))
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("policy.local connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skill_is_served_and_other_routes_say_why_not() {
        let skill = answer("GET", "/v1/skill");
        assert_eq!(skill.status(), StatusCode::OK);
        assert!(SKILL.contains("policy.local/v1/proposals"));
        assert_eq!(
            answer("POST", "/v1/skill").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer("GET", "/v1/policy/current").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
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
