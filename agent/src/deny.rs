//! The one builder of denial responses (reference §3, contract §1 and
//! §2.2): every code path that refuses a request asks here, so the bodies
//! an agent reads, and the `policy.local` routes and skill paths they
//! cite, have a single definition.
//!
//! Bodies are built from structs whose field order is the JSON key order
//! (the contract pins it), never from maps. Paths are shown without their
//! query and with credential placeholders redacted.

use std::borrow::Cow;

use serde::Serialize;

/// The `policy.local` API and the skill: the names denial bodies cite and
/// the local API serves.
pub mod routes {
    /// Expands to `const NAME: &str = path;` and `const NAME_URL: &str =
    /// "http://policy.local" + path;`, so a route and its URL cannot drift.
    macro_rules! route {
        ($(#[$doc:meta])* $name:ident, $url:ident = $path:literal) => {
            $(#[$doc])*
            pub const $name: &str = $path;
            #[doc = concat!("`http://policy.local", $path, "`")]
            pub const $url: &str = concat!("http://policy.local", $path);
        };
    }

    /// The host name the agent's DNS answers for the local API.
    pub const HOST: &str = "policy.local";
    pub const BASE_URL: &str = "http://policy.local";

    route!(
        /// `GET`: the effective policy as YAML.
        POLICY_CURRENT, POLICY_CURRENT_URL = "/v1/policy/current"
    );
    route!(
        /// `GET ?last=N`: recent denial lines.
        DENIALS, DENIALS_URL = "/v1/denials"
    );
    route!(
        /// `POST`: submit a proposal; `GET /{id}` and `GET /{id}/wait`.
        PROPOSALS, PROPOSALS_URL = "/v1/proposals"
    );
    route!(
        /// `GET`: attached providers, names and key names only.
        PROVIDERS, PROVIDERS_URL = "/v1/providers"
    );
    route!(
        /// `GET`: the policy advisor skill, for workloads that cannot read
        /// the host's files (contract §2.9).
        SKILL, SKILL_URL = "/v1/skill"
    );
    /// Appended to `/v1/proposals/{id}` for the long poll.
    pub const WAIT_SUFFIX: &str = "/wait";
    /// The `inspect_recent_denials` step: the five most recent denials.
    pub const NEXT_STEP_DENIALS_URL: &str = "http://policy.local/v1/denials?last=5";

    /// Where the full skill is installed (reference §9), the path bodies cite.
    pub const SKILL_PATH: &str = "/etc/openshell/skills/policy_advisor.md";
    /// The same skill under Portcullis's own name (contract §1).
    pub const SKILL_PATH_PORTCULLIS: &str = "/etc/portcullis/skills/policy_advisor.md";
    /// The short front-matter skill that points at [`SKILL_PATH`].
    pub const SKILL_POINTER_PATH: &str = "/etc/openshell/skills/policy-advisor/SKILL.md";

    /// The single sentence that tells the agent what to do about a denial.
    pub const AGENT_GUIDANCE: &str = concat!(
        "Do not give up on this task: read the policy advisor skill at ",
        "/etc/openshell/skills/policy_advisor.md (or GET http://policy.local/v1/skill), ",
        "submit the narrowest rule that would allow this request to ",
        "http://policy.local/v1/proposals, wait on ",
        "GET http://policy.local/v1/proposals/{id}/wait until it is approved and reports ",
        "policy_reloaded: true, then retry the request."
    );
}

/// What replaces a credential placeholder in any text shown or logged.
pub const REDACTED_CREDENTIAL: &str = "[CREDENTIAL]";

/// The header naming the policy behind a denial, as OpenShell sends it.
pub const OPENSHELL_POLICY_HEADER: &str = "X-OpenShell-Policy";
/// The same, under Portcullis's name (contract §2.10).
pub const PORTCULLIS_POLICY_HEADER: &str = "X-Portcullis-Policy";

/// A request refused at L7 (reference §3.1).
#[derive(Clone, Copy, Debug)]
pub struct L7Denial<'a> {
    /// The policy key the decision names.
    pub policy: &'a str,
    /// The engine's reason, e.g. `GET /x not permitted by policy`.
    pub detail: &'a str,
    pub method: &'a str,
    /// The canonical path; any query is dropped here.
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    /// The executable's path.
    pub binary: Option<&'a str>,
}

/// An HTTP or TLS connection refused at L4, answered in-band (contract
/// §2.2) so the agent learns what to propose.
#[derive(Clone, Copy, Debug)]
pub struct L4Denial<'a> {
    /// The policy key the decision names, if any; `-` when none matched.
    pub policy: Option<&'a str>,
    /// The L4 reason, e.g. `endpoint api.example:443 is not allowed by any policy`.
    pub detail: &'a str,
    /// The request line, when one was read (after TLS termination or
    /// from a plaintext head); the rule then names it.
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    pub binary: Option<&'a str>,
}

/// The other structured errors (reference §3.2–3.4), each with its status
/// and body key (`detail`, or `message` for credential resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The destination address is blocked (§2.5).
    SsrfDenied,
    /// Credentials would cross a tunnel Portcullis cannot inspect.
    UninspectedCredentials,
    /// TLS must be terminated but the local CA is unavailable.
    TlsTerminationUnavailable,
    /// An L7 route received something that is not HTTP/1 (e.g. h2c).
    UnsupportedL7Protocol,
    /// A known placeholder used toward a host it is not bound to.
    CredentialEndpointMismatch,
    /// A placeholder that cannot be resolved now.
    CredentialUnavailable,
    /// A malformed or unknown placeholder in the request target.
    InvalidCredentialPlaceholder,
    /// A request target that does not canonicalise.
    InvalidRequestTarget,
    /// A request head over the size limit.
    RequestHeaderFieldsTooLarge,
    /// A malformed request: bad framing, conflicting lengths (smuggling).
    InvalidRequest,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream accepted the request but sent no response head in
    /// time (`upstream_response_seconds`).
    UpstreamTimeout,
}

impl ErrorKind {
    pub const ALL: [Self; 12] = [
        Self::SsrfDenied,
        Self::UninspectedCredentials,
        Self::TlsTerminationUnavailable,
        Self::UnsupportedL7Protocol,
        Self::CredentialEndpointMismatch,
        Self::CredentialUnavailable,
        Self::InvalidCredentialPlaceholder,
        Self::InvalidRequestTarget,
        Self::RequestHeaderFieldsTooLarge,
        Self::InvalidRequest,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
    ];

    /// The body's `error` value.
    pub const fn code(self) -> &'static str {
        match self {
            Self::SsrfDenied => "ssrf_denied",
            Self::UninspectedCredentials => "uninspected_credentials",
            Self::TlsTerminationUnavailable => "tls_termination_unavailable",
            Self::UnsupportedL7Protocol => "unsupported_l7_protocol",
            Self::CredentialEndpointMismatch => "credential_endpoint_mismatch",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::InvalidCredentialPlaceholder => "invalid_credential_placeholder",
            Self::InvalidRequestTarget => "invalid_request_target",
            Self::RequestHeaderFieldsTooLarge => "request_header_fields_too_large",
            Self::InvalidRequest => "invalid_request",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub const fn status(self) -> u16 {
        match self {
            Self::SsrfDenied
            | Self::UninspectedCredentials
            | Self::UnsupportedL7Protocol
            | Self::CredentialEndpointMismatch => 403,
            Self::TlsTerminationUnavailable => 503,
            Self::CredentialUnavailable => 500,
            Self::InvalidCredentialPlaceholder
            | Self::InvalidRequestTarget
            | Self::InvalidRequest => 400,
            Self::RequestHeaderFieldsTooLarge => 431,
            Self::UpstreamUnreachable => 502,
            Self::UpstreamTimeout => 504,
        }
    }

    /// Credential-resolution bodies say `message` where the rest say
    /// `detail` (reference §3.4).
    const fn uses_message_key(self) -> bool {
        matches!(
            self,
            Self::CredentialEndpointMismatch | Self::CredentialUnavailable
        )
    }

    /// The text used when the caller has none.
    pub const fn default_detail(self) -> &'static str {
        match self {
            Self::SsrfDenied => "the destination address is internal or otherwise blocked",
            Self::UninspectedCredentials => {
                "this endpoint carries provider credentials, but the connection would not be \
                 inspected (L4 only or tls: skip); the endpoint needs \
                 allow_uninspected_credentials: true to permit that"
            }
            Self::TlsTerminationUnavailable => {
                "TLS must be terminated to enforce this endpoint's policy, but the local CA \
                 is unavailable; the connection was refused rather than passed uninspected"
            }
            Self::UnsupportedL7Protocol => {
                "this endpoint is inspected as HTTP/1, but the connection spoke another protocol"
            }
            Self::CredentialEndpointMismatch => {
                "a credential placeholder was used toward a host it is not bound to"
            }
            Self::CredentialUnavailable => "a credential placeholder could not be resolved",
            Self::InvalidCredentialPlaceholder => {
                "the request target contains a malformed or unknown credential placeholder"
            }
            Self::InvalidRequestTarget => "the request target could not be canonicalised",
            Self::RequestHeaderFieldsTooLarge => "the request head is larger than the limit",
            Self::InvalidRequest => "the request is malformed",
            Self::UpstreamUnreachable => "the connection to the upstream failed",
            Self::UpstreamTimeout => {
                "the upstream sent no response in time; the request may or may not have \
                 taken effect"
            }
        }
    }
}

/// A ready response: status, headers and JSON body. `headers` holds only
/// fields valid in HTTP/1.1 and HTTP/2 alike; [`DenyResponse::to_http1`]
/// adds the framing (`Content-Length`, `Connection: close`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl DenyResponse {
    /// The agent-readable 403 for an L7 denial.
    pub fn l7(d: &L7Denial<'_>) -> Self {
        let policy = non_empty(Some(d.policy)).unwrap_or("-");
        let path = display_path(d.path);
        let host = non_empty(d.host).map(str::to_ascii_lowercase);
        let facts = Facts {
            method: Some(d.method),
            path: Some(path.clone()),
            host,
            port: d.port,
            binary: non_empty(d.binary),
        };
        let body = PolicyDenied {
            error: "policy_denied",
            policy,
            rule: format!("{} {path}", d.method),
            detail: redact_credentials(d.detail),
            layer: "l7",
            // OpenShell says `rest` for every L7 denial; agents key on it.
            protocol: Some("rest"),
            facts: facts.clone(),
            rule_missing: RuleMissing {
                kind: "rest_allow",
                layer: "l7",
                facts,
            },
            next_steps: next_steps(),
            agent_guidance: routes::AGENT_GUIDANCE,
        };
        Self::policy_denied(policy, &body)
    }

    /// The agent-readable 403 for an HTTP or TLS connection denied at L4.
    pub fn l4(d: &L4Denial<'_>) -> Self {
        let policy = non_empty(d.policy).unwrap_or("-");
        let host = d.host.trim().to_ascii_lowercase();
        let facts = Facts {
            method: non_empty(d.method),
            path: non_empty(d.path).map(display_path),
            host: Some(host.clone()),
            port: Some(d.port),
            binary: non_empty(d.binary),
        };
        let rule = match (facts.method, &facts.path) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            _ => format!("CONNECT {}", host_port(&host, d.port)),
        };
        let body = PolicyDenied {
            error: "policy_denied",
            policy,
            rule,
            detail: redact_credentials(d.detail),
            layer: "l4",
            // An L4 rule has no protocol; naming one would invite a wrong proposal.
            protocol: None,
            rule_missing: RuleMissing {
                kind: "l4_allow",
                layer: "l4",
                // An L4 rule is host, port and binary; the request is context.
                facts: Facts {
                    method: None,
                    path: None,
                    ..facts.clone()
                },
            },
            facts,
            next_steps: next_steps(),
            agent_guidance: routes::AGENT_GUIDANCE,
        };
        Self::policy_denied(policy, &body)
    }

    /// One of the other structured errors. An empty `detail` takes the
    /// kind's default text.
    pub fn error(kind: ErrorKind, detail: &str) -> Self {
        let text = match detail.trim() {
            "" => Cow::Borrowed(kind.default_detail()),
            t => redact_credentials(t),
        };
        let body = if kind.uses_message_key() {
            ErrorBody {
                error: kind.code(),
                detail: None,
                message: Some(text),
            }
        } else {
            ErrorBody {
                error: kind.code(),
                detail: Some(text),
                message: None,
            }
        };
        Self {
            status: kind.status(),
            headers: vec![("Content-Type", "application/json".into())],
            body: to_json(&body),
        }
    }

    fn policy_denied(policy: &str, body: &PolicyDenied<'_>) -> Self {
        let policy = header_value(policy);
        Self {
            status: 403,
            headers: vec![
                ("Content-Type", "application/json".into()),
                (OPENSHELL_POLICY_HEADER, policy.clone()),
                (PORTCULLIS_POLICY_HEADER, policy),
            ],
            body: to_json(body),
        }
    }

    /// The whole HTTP/1.1 response. The connection is to be closed after
    /// it (a denial ends the tunnel, reference §2.7).
    pub fn to_http1(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(&header_value(value));
            head.push_str("\r\n");
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Replaces every credential placeholder in `text` with `[CREDENTIAL]`:
/// `openshell:resolve:env:KEY` (any case, `:` raw or as `%3A`, so a
/// canonical path is covered) and the whole-token alias
/// `prefix-OPENSHELL-RESOLVE-ENV-KEY` (reference §6.4).
pub fn redact_credentials(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    // Every form starts with `openshell`: most text has none, and the
    // per-request decision should not pay for the full scan then.
    if !contains_ignore_ascii_case(bytes, b"openshell") {
        return Cow::Borrowed(text);
    }
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let floor = ranges.last().map_or(0, |r| r.1);
        if let Some(end) = match_marker(bytes, i, &["openshell", "resolve", "env"], true) {
            let end = skip_key(bytes, end);
            ranges.push((i, end));
            i = end;
        } else if bytes.get(i) == Some(&b'-')
            && let Some(end) = match_marker(bytes, i + 1, &["openshell", "resolve", "env"], false)
        {
            // The alias is a whole token: its prefix goes too.
            let mut start = i;
            while start > floor && bytes.get(start - 1).copied().is_some_and(is_token_byte) {
                start -= 1;
            }
            let end = skip_key(bytes, end);
            ranges.push((start, end));
            i = end;
        } else {
            i += 1;
        }
    }
    if ranges.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (start, end) in ranges {
        out.push_str(text.get(from..start).unwrap_or_default());
        out.push_str(REDACTED_CREDENTIAL);
        from = end;
    }
    out.push_str(text.get(from..).unwrap_or_default());
    Cow::Owned(out)
}

/// Matches `w0 SEP w1 SEP w2 SEP` at `at`, case-insensitively, where SEP
/// is `:` or `%3A` (`colon`) or `-` (the alias). Returns the end.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn match_marker(bytes: &[u8], at: usize, words: &[&str], colon: bool) -> Option<usize> {
    let mut i = at;
    for word in words {
        let w = word.as_bytes();
        let got = bytes.get(i..i + w.len())?;
        if !got.eq_ignore_ascii_case(w) {
            return None;
        }
        i += w.len();
        if colon {
            if bytes.get(i) == Some(&b':') {
                i += 1;
            } else if bytes
                .get(i..i + 3)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"%3a"))
            {
                i += 3;
            } else {
                return None;
            }
        } else if bytes.get(i) == Some(&b'-') {
            i += 1;
        } else {
            return None;
        }
    }
    Some(i)
}

/// Env keys, including the `v<rev>_` and `s<hex>_` forms.
fn skip_key(bytes: &[u8], mut i: usize) -> usize {
    while bytes
        .get(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        i += 1;
    }
    i
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// The path as a body shows it: no query, placeholders redacted.
fn display_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    redact_credentials(path).into_owned()
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// A header value cannot carry CR, LF or other controls (that would be
/// header injection), nor, portably, non-ASCII: such bytes are
/// percent-encoded.
fn header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..0x7F).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

fn to_json<T: Serialize>(body: &T) -> String {
    // Serialising plain structs of strings and numbers cannot fail; the
    // fallback keeps this path panic-free regardless.
    serde_json::to_string(body).unwrap_or_else(|_| {
        r#"{"error":"internal_error","detail":"response body failed to serialise"}"#.into()
    })
}

/// The `policy_denied` body. Field order is the contract's key order
/// (a flattened struct serialises its fields in place, in order).
#[derive(Serialize)]
struct PolicyDenied<'a> {
    error: &'static str,
    policy: &'a str,
    rule: String,
    detail: Cow<'a, str>,
    layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(flatten)]
    facts: Facts<'a>,
    rule_missing: RuleMissing<'a>,
    next_steps: [NextStep; 4],
    agent_guidance: &'static str,
}

#[derive(Serialize)]
struct RuleMissing<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    layer: &'static str,
    #[serde(flatten)]
    facts: Facts<'a>,
}

/// What the body knows about the request; unknown facts are omitted.
#[derive(Clone, Serialize)]
struct Facts<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<&'a str>,
}

#[derive(Serialize)]
struct NextStep {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'static str>,
    url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_type: Option<&'static str>,
}

/// Reference §3.1's four steps; `read_skill` carries both the file path
/// and the URL (contract §2.9).
fn next_steps() -> [NextStep; 4] {
    [
        NextStep {
            action: "read_skill",
            method: None,
            path: Some(routes::SKILL_PATH),
            url: routes::SKILL_URL,
            body_type: None,
        },
        NextStep {
            action: "inspect_policy",
            method: Some("GET"),
            path: None,
            url: routes::POLICY_CURRENT_URL,
            body_type: None,
        },
        NextStep {
            action: "inspect_recent_denials",
            method: Some("GET"),
            path: None,
            url: routes::NEXT_STEP_DENIALS_URL,
            body_type: None,
        },
        NextStep {
            action: "submit_proposal",
            method: Some("POST"),
            path: None,
            url: routes::PROPOSALS_URL,
            body_type: Some("PolicyMergeOperation"),
        },
    ]
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXT_STEPS_JSON: &str = concat!(
        r#""next_steps":["#,
        r#"{"action":"read_skill","path":"/etc/openshell/skills/policy_advisor.md","url":"http://policy.local/v1/skill"},"#,
        r#"{"action":"inspect_policy","method":"GET","url":"http://policy.local/v1/policy/current"},"#,
        r#"{"action":"inspect_recent_denials","method":"GET","url":"http://policy.local/v1/denials?last=5"},"#,
        r#"{"action":"submit_proposal","method":"POST","url":"http://policy.local/v1/proposals","body_type":"PolicyMergeOperation"}"#,
        r#"]"#
    );

    fn keys(body: &str) -> Vec<String> {
        // Top-level keys in order, read from the text itself.
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let obj = v.as_object().unwrap();
        let mut found: Vec<(usize, String)> = obj
            .keys()
            .map(|k| (body.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    }

    fn l7_denial() -> L7Denial<'static> {
        L7Denial {
            policy: "github_api",
            detail: "PUT /repos/acme/widgets/contents/README.md not permitted by policy",
            method: "PUT",
            path: "/repos/acme/widgets/contents/README.md?ref=main&token=abc",
            host: Some("API.GitHub.com"),
            port: Some(443),
            binary: Some("/usr/bin/gh"),
        }
    }

    #[test]
    fn l7_body_is_pinned() {
        let r = DenyResponse::l7(&l7_denial());
        assert_eq!(r.status, 403);
        let expected = [
            r#"{"error":"policy_denied","policy":"github_api","#,
            r#""rule":"PUT /repos/acme/widgets/contents/README.md","#,
            r#""detail":"PUT /repos/acme/widgets/contents/README.md not permitted by policy","#,
            r#""layer":"l7","protocol":"rest","method":"PUT","#,
            r#""path":"/repos/acme/widgets/contents/README.md","#,
            r#""host":"api.github.com","port":443,"binary":"/usr/bin/gh","#,
            r#""rule_missing":{"type":"rest_allow","layer":"l7","method":"PUT","#,
            r#""path":"/repos/acme/widgets/contents/README.md","host":"api.github.com","#,
            r#""port":443,"binary":"/usr/bin/gh"},"#,
            NEXT_STEPS_JSON,
            r#","agent_guidance":""#,
            routes::AGENT_GUIDANCE,
            r#""}"#,
        ]
        .concat();
        assert_eq!(r.body, expected);
        assert_eq!(
            keys(&r.body),
            [
                "error",
                "policy",
                "rule",
                "detail",
                "layer",
                "protocol",
                "method",
                "path",
                "host",
                "port",
                "binary",
                "rule_missing",
                "next_steps",
                "agent_guidance"
            ]
        );
        assert_eq!(r.header("x-openshell-policy"), Some("github_api"));
        assert_eq!(r.header("X-Portcullis-Policy"), Some("github_api"));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }

    #[test]
    fn l7_body_omits_unknown_context() {
        let r = DenyResponse::l7(&L7Denial {
            host: Some("  "),
            port: None,
            binary: None,
            ..l7_denial()
        });
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        for key in ["host", "port", "binary"] {
            assert!(v.get(key).is_none(), "{key}");
            assert!(v["rule_missing"].get(key).is_none(), "{key}");
        }
        assert_eq!(v["rule_missing"]["path"], v["path"]);
    }

    #[test]
    fn l4_body_is_pinned() {
        let r = DenyResponse::l4(&L4Denial {
            policy: None,
            detail: "endpoint example.org:443 is not allowed by any policy",
            method: None,
            path: None,
            host: "Example.org",
            port: 443,
            binary: Some("/usr/bin/curl"),
        });
        assert_eq!(r.status, 403);
        let expected = [
            r#"{"error":"policy_denied","policy":"-","rule":"CONNECT example.org:443","#,
            r#""detail":"endpoint example.org:443 is not allowed by any policy","#,
            r#""layer":"l4","host":"example.org","port":443,"binary":"/usr/bin/curl","#,
            r#""rule_missing":{"type":"l4_allow","layer":"l4","host":"example.org","port":443,"binary":"/usr/bin/curl"},"#,
            NEXT_STEPS_JSON,
            r#","agent_guidance":""#,
            routes::AGENT_GUIDANCE,
            r#""}"#,
        ]
        .concat();
        assert_eq!(r.body, expected);
        assert_eq!(r.header(OPENSHELL_POLICY_HEADER), Some("-"));
        assert_eq!(r.header(PORTCULLIS_POLICY_HEADER), Some("-"));
    }

    #[test]
    fn l4_body_names_the_request_when_known() {
        let r = DenyResponse::l4(&L4Denial {
            policy: Some("other"),
            detail: "binary '/usr/bin/wget' not allowed in policy 'other'",
            method: Some("GET"),
            path: Some("/dl/openshell:resolve:env:TOKEN/file?sig=s3cret"),
            host: "2001:db8::1",
            port: 8443,
            binary: None,
        });
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["rule"], "GET /dl/[CREDENTIAL]/file");
        assert_eq!(v["path"], "/dl/[CREDENTIAL]/file");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["policy"], "other");
        assert!(v.get("binary").is_none());
        assert!(v["rule_missing"].get("method").is_none());
        assert!(!r.body.contains("s3cret"));
        assert_eq!(
            keys(&r.body),
            [
                "error",
                "policy",
                "rule",
                "detail",
                "layer",
                "method",
                "path",
                "host",
                "port",
                "rule_missing",
                "next_steps",
                "agent_guidance"
            ]
        );
        let r = DenyResponse::l4(&L4Denial {
            policy: None,
            detail: "x",
            method: None,
            path: None,
            host: "2001:db8::1",
            port: 8443,
            binary: None,
        });
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["rule"], "CONNECT [2001:db8::1]:8443");
    }

    #[test]
    fn queries_and_placeholders_never_reach_the_body() {
        let r = DenyResponse::l7(&L7Denial {
            path: "/bot/openshell:resolve:env:TG_TOKEN/send?chat=1&key=openshell:resolve:env:K",
            detail: "GET /bot/openshell%3Aresolve%3Aenv%3ATG_TOKEN/send not permitted by policy",
            ..l7_denial()
        });
        assert!(!r.body.contains("openshell:resolve"), "{}", r.body);
        assert!(
            !r.body.to_lowercase().contains("openshell%3a"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("chat="));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["path"], "/bot/[CREDENTIAL]/send");
        assert_eq!(v["rule_missing"]["path"], "/bot/[CREDENTIAL]/send");
        assert_eq!(
            v["detail"],
            "GET /bot/[CREDENTIAL]/send not permitted by policy"
        );
    }

    #[test]
    fn redaction_covers_every_placeholder_form() {
        let cases = [
            (
                "/a/openshell:resolve:env:GITHUB_TOKEN/b",
                "/a/[CREDENTIAL]/b",
            ),
            ("/a/OPENSHELL%3aRESOLVE%3AENV%3Akey", "/a/[CREDENTIAL]"),
            ("openshell:resolve:env:v3_KEY", "[CREDENTIAL]"),
            (
                &format!("x=openshell:resolve:env:s{}_KEY&y", "a".repeat(64)),
                "x=[CREDENTIAL]&y",
            ),
            (
                "/v1/sk-proj-OPENSHELL-RESOLVE-ENV-OPENAI_KEY/x",
                "/v1/[CREDENTIAL]/x",
            ),
            ("Bearer ghp-OPENSHELL-RESOLVE-ENV-GH", "Bearer [CREDENTIAL]"),
            (
                "/openshell:resolve:env:A/openshell:resolve:env:B",
                "/[CREDENTIAL]/[CREDENTIAL]",
            ),
            ("/nothing/here", "/nothing/here"),
            ("/openshell:resolve:nope", "/openshell:resolve:nope"),
            ("/openshell-resolve-env", "/openshell-resolve-env"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_credentials(input), want, "{input}");
        }
        assert!(matches!(redact_credentials("/plain"), Cow::Borrowed(_)));
        // Never panics on arbitrary text, including multi-byte characters
        // next to a marker.
        for s in [
            "é-OPENSHELL-RESOLVE-ENV-K",
            "ü/openshell:resolve:env:",
            "%3",
            "-",
        ] {
            let _ = redact_credentials(s);
        }
        assert_eq!(
            redact_credentials("é-OPENSHELL-RESOLVE-ENV-K"),
            "é[CREDENTIAL]"
        );
    }

    #[test]
    fn every_error_kind_has_its_status_and_keys() {
        let expected: [(ErrorKind, u16, &str, &str); 12] = [
            (ErrorKind::SsrfDenied, 403, "ssrf_denied", "detail"),
            (
                ErrorKind::UninspectedCredentials,
                403,
                "uninspected_credentials",
                "detail",
            ),
            (
                ErrorKind::TlsTerminationUnavailable,
                503,
                "tls_termination_unavailable",
                "detail",
            ),
            (
                ErrorKind::UnsupportedL7Protocol,
                403,
                "unsupported_l7_protocol",
                "detail",
            ),
            (
                ErrorKind::CredentialEndpointMismatch,
                403,
                "credential_endpoint_mismatch",
                "message",
            ),
            (
                ErrorKind::CredentialUnavailable,
                500,
                "credential_unavailable",
                "message",
            ),
            (
                ErrorKind::InvalidCredentialPlaceholder,
                400,
                "invalid_credential_placeholder",
                "detail",
            ),
            (
                ErrorKind::InvalidRequestTarget,
                400,
                "invalid_request_target",
                "detail",
            ),
            (
                ErrorKind::RequestHeaderFieldsTooLarge,
                431,
                "request_header_fields_too_large",
                "detail",
            ),
            (ErrorKind::InvalidRequest, 400, "invalid_request", "detail"),
            (
                ErrorKind::UpstreamUnreachable,
                502,
                "upstream_unreachable",
                "detail",
            ),
            (
                ErrorKind::UpstreamTimeout,
                504,
                "upstream_timeout",
                "detail",
            ),
        ];
        assert_eq!(expected.map(|e| e.0), ErrorKind::ALL);
        for (kind, status, code, text_key) in expected {
            let r = DenyResponse::error(kind, "why it failed");
            assert_eq!(r.status, status, "{kind:?}");
            assert_eq!(
                r.body,
                format!(r#"{{"error":"{code}","{text_key}":"why it failed"}}"#),
                "{kind:?}"
            );
            assert_eq!(r.header(OPENSHELL_POLICY_HEADER), None);
            // No caller text: the kind's own explanation, never empty.
            let r = DenyResponse::error(kind, " ");
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v[text_key], kind.default_detail());
            assert!(!kind.default_detail().is_empty());
        }
        let r = DenyResponse::error(
            ErrorKind::CredentialEndpointMismatch,
            "openshell:resolve:env:GH is bound to api.github.com, not evil.test",
        );
        assert!(r.body.contains("[CREDENTIAL] is bound to"), "{}", r.body);
    }

    #[test]
    fn http1_framing() {
        let r = DenyResponse::error(
            ErrorKind::InvalidRequest,
            "both Content-Length and Transfer-Encoding",
        );
        let wire = String::from_utf8(r.to_http1()).unwrap();
        let (head, body) = wire.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, r.body);
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 400 Bad Request");
        assert!(lines.contains(&"Content-Type: application/json"));
        assert!(lines.contains(&format!("Content-Length: {}", body.len()).as_str()));
        assert!(lines.contains(&"Connection: close"));

        let r = DenyResponse::l7(&l7_denial());
        let wire = String::from_utf8(r.to_http1()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(wire.contains("\r\nX-OpenShell-Policy: github_api\r\n"));
        assert!(wire.contains("\r\nX-Portcullis-Policy: github_api\r\n"));
        for kind in ErrorKind::ALL {
            let wire = DenyResponse::error(kind, "").to_http1();
            let status = kind.status().to_string();
            assert!(wire.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
            assert!(!wire.starts_with(format!("HTTP/1.1 {status} Error").as_bytes()));
        }
    }

    #[test]
    fn policy_keys_cannot_inject_headers() {
        let r = DenyResponse::l7(&L7Denial {
            policy: "evil\r\nSet-Cookie: x=1 ключ",
            ..l7_denial()
        });
        let value = r.header(OPENSHELL_POLICY_HEADER).unwrap();
        assert_eq!(value, "evil%0D%0ASet-Cookie: x=1 %D0%BA%D0%BB%D1%8E%D1%87");
        let wire = String::from_utf8(r.to_http1()).unwrap();
        assert!(!wire.contains("\r\nSet-Cookie"));
        // The body keeps the key as written, JSON-escaped.
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["policy"], "evil\r\nSet-Cookie: x=1 ключ");
    }

    #[test]
    fn routes_and_guidance_agree() {
        assert_eq!(
            routes::SKILL_URL,
            format!("{}{}", routes::BASE_URL, routes::SKILL)
        );
        assert_eq!(
            routes::POLICY_CURRENT_URL,
            format!("{}{}", routes::BASE_URL, routes::POLICY_CURRENT)
        );
        assert_eq!(routes::PROPOSALS_URL, "http://policy.local/v1/proposals");
        assert_eq!(routes::PROVIDERS_URL, "http://policy.local/v1/providers");
        assert_eq!(
            routes::NEXT_STEP_DENIALS_URL,
            format!("{}?last=5", routes::DENIALS_URL)
        );
        assert_eq!(routes::BASE_URL, format!("http://{}", routes::HOST));
        let g = routes::AGENT_GUIDANCE;
        assert!(g.contains(routes::SKILL_PATH));
        assert!(g.contains(routes::SKILL_URL));
        assert!(g.contains(routes::PROPOSALS_URL));
        assert!(g.contains(&format!(
            "{}/{{id}}{}",
            routes::PROPOSALS_URL,
            routes::WAIT_SUFFIX
        )));
        assert!(g.contains("policy_reloaded: true"));
        // One sentence.
        assert_eq!(g.matches(". ").count(), 0);
        assert!(g.ends_with('.'));
    }
}
