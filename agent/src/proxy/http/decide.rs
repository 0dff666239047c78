//! The per-request L7 decision (reference §1.4, §2.7) over the endpoints
//! that matched a connection at L4.
//!
//! 1. No matched endpoint has L7 config: the connection is L4-only and
//!    relayed raw ([`L7Outcome::NotInspected`]). One L7 endpoint among
//!    them is enough to inspect every request, as in OpenShell: a plain
//!    L4 endpoint then grants nothing at L7.
//! 2. Candidates: the L7 endpoints whose `path` scope matches the request
//!    path (no scope matches every path). None: deny.
//! 3. The route is the candidate with the most specific scope; its
//!    `allow_encoded_slash` and `enforcement` apply to the request.
//! 4. A deny rule of any candidate wins; else an allow rule of any
//!    candidate allows (§1.4: "allow from any, deny from any"); else deny.
//! 5. A denial is an [`L7Outcome::Audit`] (forwarded) when the endpoint
//!    that decided is in `enforcement: audit`: the deny rule's owner, or
//!    the route when nothing allowed.
//!
//! Evaluation sees credential placeholders as `[CREDENTIAL]` (§2.7), so
//! rules and reasons never depend on them.

use std::borrow::Cow;

use crate::deny::redact_credentials;
use crate::policy::l7::{path_matches, path_specificity};
use crate::policy::{EndpointMatch, L7Config};

/// The deny reason when no L7 endpoint's `path` scope covers the request.
pub const NO_PATH_MATCHED: &str = "no L7 endpoint path matched request";

/// The policy key reported when no rule is involved at all.
pub const NO_POLICY: &str = "-";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Outcome {
    /// Forward. `rule` is the policy key whose allow rule matched.
    Allow { rule: String },
    /// Not allowed, but the deciding endpoint audits: forward and log.
    Audit { rule: String, reason: String },
    /// Refuse with the L7 deny body. `rule` is the policy key for the
    /// body and the `X-OpenShell-Policy` header.
    Deny { rule: String, reason: String },
    /// No L7 endpoint matched: relay the connection raw.
    NotInspected,
}

/// Whether the request target may keep `%2F`/`%5C`: canonicalisation runs
/// before the route is known, so it asks whether any L7 endpoint allows
/// it; [`decide`] then holds the chosen route to its own setting.
pub fn allow_encoded_slash(matches: &[EndpointMatch<'_>]) -> bool {
    matches
        .iter()
        .any(|m| m.endpoint.l7.is_some() && m.endpoint.allow_encoded_slash)
}

/// The route for a request path: the L7 endpoint with the most specific
/// matching `path` scope. Ties go to an enforcing endpoint, then to the
/// first in key order, so the choice is stable and never the laxer one.
pub fn route<'a, 'p>(
    matches: &'a [EndpointMatch<'p>],
    path: &str,
) -> Option<&'a EndpointMatch<'p>> {
    route_redacted(matches, &redact_credentials(path))
}

/// [`route`] for a path whose placeholders are already redacted.
fn route_redacted<'a, 'p>(
    matches: &'a [EndpointMatch<'p>],
    path: &str,
) -> Option<&'a EndpointMatch<'p>> {
    candidates(matches, path).fold(None, |best, (m, _)| match best {
        Some(b) if rank(b) >= rank(m) => Some(b),
        _ => Some(m),
    })
}

/// Decides one request. `path` is canonical (see
/// [`canonicalize`](super::canonical::canonicalize)) and `params` its
/// decoded query pairs.
pub fn decide(
    matches: &[EndpointMatch<'_>],
    method: &str,
    path: &str,
    params: &[(String, String)],
) -> L7Outcome {
    let path = redact_credentials(path);
    let params: Vec<(Cow<'_, str>, Cow<'_, str>)> = params
        .iter()
        .map(|(k, v)| (redact_credentials(k), redact_credentials(v)))
        .collect();
    let not_permitted = || format!("{method} {path} not permitted by policy");

    let Some(first_l7) = matches.iter().find(|m| m.endpoint.l7.is_some()) else {
        if matches.is_empty() {
            // Nothing matched at L4 either: the caller should not be here,
            // and the safe answer is no.
            return L7Outcome::Deny {
                rule: NO_POLICY.into(),
                reason: not_permitted(),
            };
        }
        return L7Outcome::NotInspected;
    };
    let Some(primary) = route_redacted(matches, &path) else {
        return L7Outcome::Deny {
            rule: first_l7.rule.key.clone(),
            reason: NO_PATH_MATCHED.into(),
        };
    };
    if !primary.endpoint.allow_encoded_slash && has_encoded_slash(&path) {
        // Enforced even in audit mode: an encoded slash is a path the
        // upstream may read differently from the policy.
        return L7Outcome::Deny {
            rule: primary.rule.key.clone(),
            reason: format!(
                "{method} {path}: an encoded '/' or '\\' is not allowed on this endpoint \
                 (allow_encoded_slash is off)"
            ),
        };
    }

    let cands: Vec<(&EndpointMatch<'_>, &L7Config)> = candidates(matches, &path).collect();
    let deny_hit = cands
        .iter()
        .filter(|(_, cfg)| {
            cfg.deny_rules
                .iter()
                .any(|r| r.denies(method, &path, &params))
        })
        .min_by_key(|(m, _)| m.endpoint.summary.enforcement_audit);
    if let Some((m, _)) = deny_hit {
        return refuse(m, format!("{method} {path} blocked by deny rule"));
    }
    if let Some((m, _)) = cands
        .iter()
        .find(|(_, cfg)| cfg.allows(method, &path, &params))
    {
        return L7Outcome::Allow {
            rule: m.rule.key.clone(),
        };
    }
    refuse(primary, not_permitted())
}

/// L7 endpoints whose `path` scope covers the request, in match order.
fn candidates<'a, 'p>(
    matches: &'a [EndpointMatch<'p>],
    path: &str,
) -> impl Iterator<Item = (&'a EndpointMatch<'p>, &'p L7Config)> {
    matches.iter().filter_map(move |m| {
        let cfg = m.endpoint.l7.as_ref()?;
        let in_scope = m
            .endpoint
            .path
            .as_deref()
            .is_none_or(|scope| path_matches(scope, path));
        in_scope.then_some((m, cfg))
    })
}

/// Route preference: specificity, then enforcing over auditing.
fn rank(m: &EndpointMatch<'_>) -> (usize, bool) {
    (
        m.endpoint.path.as_deref().map_or(0, path_specificity),
        !m.endpoint.summary.enforcement_audit,
    )
}

fn refuse(m: &EndpointMatch<'_>, reason: String) -> L7Outcome {
    let rule = m.rule.key.clone();
    if m.endpoint.summary.enforcement_audit {
        L7Outcome::Audit { rule, reason }
    } else {
        L7Outcome::Deny { rule, reason }
    }
}

fn has_encoded_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| match w {
        [b'%', b'2', x] => x.eq_ignore_ascii_case(&b'f'),
        [b'%', b'5', x] => x.eq_ignore_ascii_case(&b'c'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;

    use super::*;
    use crate::policy::{L4Request, Policy};
    use crate::proxy::http::canonical::canonicalize;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn policy(network_policies: &str) -> Policy {
        let yaml = format!("version: 1\nnetwork_policies:\n{network_policies}");
        Policy::parse("test.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Decides `METHOD target` from `/usr/bin/curl` to `host:443`.
    fn run(p: &Policy, host: &str, method: &str, target: &str) -> L7Outcome {
        run_port(p, host, 443, method, target)
    }

    fn run_port(p: &Policy, host: &str, port: u16, method: &str, target: &str) -> L7Outcome {
        let hostnames = [host.to_string()];
        let binaries = [Path::new("/usr/bin/curl")];
        let req = L4Request {
            hostnames: &hostnames,
            ip: IP,
            port,
            binaries: &binaries,
        };
        let matches = p.matching_endpoints(&req);
        let t = canonicalize(target, allow_encoded_slash(&matches))
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        decide(&matches, method, &t.path, &t.params)
    }

    fn allow(rule: &str) -> L7Outcome {
        L7Outcome::Allow { rule: rule.into() }
    }

    fn deny(rule: &str, reason: &str) -> L7Outcome {
        L7Outcome::Deny {
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    fn audit(rule: &str, reason: &str) -> L7Outcome {
        L7Outcome::Audit {
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    const GITHUB: &str = r#"
  github:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        rules:
          - allow: { method: GET, path: "/repos/**" }
          - allow: { method: PUT, path: "/repos/*/*/contents/**" }
          - allow:
              method: POST
              path: "/search"
              query: { q: "repo:*", page: { any: ["1", "2"] } }
        deny_rules:
          - { method: "*", path: "/repos/*/*/actions/**" }
          - { method: GET, path: "/repos/*/*/search", query: { scope: "admin*" } }
    binaries:
      - path: /usr/bin/curl
"#;

    #[test]
    fn allow_rules_allow_and_everything_else_is_denied() {
        let p = policy(GITHUB);
        let h = "api.github.com";
        assert_eq!(run(&p, h, "GET", "/repos/acme/widgets"), allow("github"));
        assert_eq!(
            run(&p, h, "PUT", "/repos/acme/w/contents/a/b.md"),
            allow("github")
        );
        assert_eq!(
            run(&p, h, "DELETE", "/repos/acme/widgets"),
            deny(
                "github",
                "DELETE /repos/acme/widgets not permitted by policy"
            )
        );
        assert_eq!(
            run(&p, h, "GET", "/user"),
            deny("github", "GET /user not permitted by policy")
        );
        // `*` stays within one segment.
        assert_eq!(
            run(&p, h, "PUT", "/repos/acme/contents/x"),
            deny(
                "github",
                "PUT /repos/acme/contents/x not permitted by policy"
            )
        );
    }

    #[test]
    fn get_rules_also_allow_head_and_methods_ignore_case() {
        let p = policy(GITHUB);
        assert_eq!(
            run(&p, "api.github.com", "HEAD", "/repos/a/b"),
            allow("github")
        );
        assert_eq!(
            run(&p, "api.github.com", "get", "/repos/a/b"),
            allow("github")
        );
    }

    #[test]
    fn deny_rules_win() {
        let p = policy(GITHUB);
        let h = "api.github.com";
        assert_eq!(
            run(&p, h, "GET", "/repos/acme/w/actions/runs"),
            deny(
                "github",
                "GET /repos/acme/w/actions/runs blocked by deny rule"
            )
        );
        // A deny rule on GET also covers HEAD.
        assert!(matches!(
            run(&p, h, "HEAD", "/repos/acme/w/actions/runs"),
            L7Outcome::Deny { .. }
        ));
    }

    #[test]
    fn canonicalisation_feeds_the_decision() {
        let p = policy(GITHUB);
        let h = "api.github.com";
        // Traversal out of an allowed prefix is resolved before matching.
        assert_eq!(
            run(&p, h, "GET", "/repos/../user"),
            deny("github", "GET /user not permitted by policy")
        );
        // Dodging a deny rule by spelling does not work.
        for spelled in [
            "/repos/acme/w/%61ctions/runs",
            "/repos/acme//w/actions/runs",
            "/repos/acme/w/./actions/runs",
            "/repos/acme/w;x=1/actions/runs",
            "/repos/acme/w/x/../actions/runs",
        ] {
            assert_eq!(
                run(&p, h, "GET", spelled),
                deny(
                    "github",
                    "GET /repos/acme/w/actions/runs blocked by deny rule"
                ),
                "{spelled}"
            );
        }
    }

    #[test]
    fn allow_queries_need_every_value_to_match() {
        let p = policy(GITHUB);
        let h = "api.github.com";
        assert_eq!(
            run(&p, h, "POST", "/search?q=repo:acme&page=1"),
            allow("github")
        );
        assert_eq!(
            run(&p, h, "POST", "/search?q=repo%3Aacme&page=2&x=y"),
            allow("github")
        );
        let denied = deny("github", "POST /search not permitted by policy");
        assert_eq!(run(&p, h, "POST", "/search?q=repo:acme&page=3"), denied);
        assert_eq!(
            run(&p, h, "POST", "/search?q=repo:a&q=user:b&page=1"),
            denied
        );
        assert_eq!(run(&p, h, "POST", "/search?q=repo:acme"), denied);
        assert_eq!(run(&p, h, "POST", "/search"), denied);
    }

    #[test]
    fn deny_queries_need_only_one_value_to_match() {
        let p = policy(GITHUB);
        let h = "api.github.com";
        let blocked = deny("github", "GET /repos/a/b/search blocked by deny rule");
        assert_eq!(run(&p, h, "GET", "/repos/a/b/search?scope=admin"), blocked);
        // Hiding the bad value behind a good one does not help.
        assert_eq!(
            run(
                &p,
                h,
                "GET",
                "/repos/a/b/search?scope=public&scope=admin:all"
            ),
            blocked
        );
        assert_eq!(
            run(&p, h, "GET", "/repos/a/b/search?scope=%61dmin"),
            blocked
        );
        // Absent or harmless: the deny rule does not apply.
        assert_eq!(run(&p, h, "GET", "/repos/a/b/search"), allow("github"));
        assert_eq!(
            run(&p, h, "GET", "/repos/a/b/search?scope=public"),
            allow("github")
        );
    }

    #[test]
    fn access_presets() {
        let p = policy(
            r#"
  pypi:
    endpoints:
      - { host: pypi.org, port: 443, protocol: rest, access: read-only }
      - { host: upload.pypi.org, port: 443, protocol: rest, access: read-write }
      - { host: full.pypi.org, port: 443, protocol: rest, access: full,
          deny_rules: [{ method: DELETE, path: "/keep/**" }] }
    binaries: [{ path: /usr/bin/curl }]
"#,
        );
        assert_eq!(run(&p, "pypi.org", "GET", "/simple/x/"), allow("pypi"));
        assert_eq!(run(&p, "pypi.org", "OPTIONS", "/"), allow("pypi"));
        assert!(matches!(
            run(&p, "pypi.org", "POST", "/x"),
            L7Outcome::Deny { .. }
        ));
        assert_eq!(run(&p, "upload.pypi.org", "PATCH", "/x"), allow("pypi"));
        assert!(matches!(
            run(&p, "upload.pypi.org", "DELETE", "/x"),
            L7Outcome::Deny { .. }
        ));
        assert_eq!(run(&p, "full.pypi.org", "DELETE", "/other"), allow("pypi"));
        assert_eq!(
            run(&p, "full.pypi.org", "DELETE", "/keep/a"),
            deny("pypi", "DELETE /keep/a blocked by deny rule")
        );
    }

    #[test]
    fn audit_mode_forwards_but_reports() {
        let p = policy(
            r#"
  trial:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        enforcement: audit
        rules: [{ allow: { method: GET, path: "/**" } }]
        deny_rules: [{ method: "*", path: "/admin/**" }]
    binaries: [{ path: /usr/bin/curl }]
"#,
        );
        let h = "api.example.com";
        assert_eq!(run(&p, h, "GET", "/x"), allow("trial"));
        assert_eq!(
            run(&p, h, "POST", "/x"),
            audit("trial", "POST /x not permitted by policy")
        );
        assert_eq!(
            run(&p, h, "GET", "/admin/users"),
            audit("trial", "GET /admin/users blocked by deny rule")
        );
    }

    #[test]
    fn plain_l4_endpoints_are_not_inspected() {
        let p = policy(
            r#"
  raw:
    endpoints:
      - { host: raw.example.com, port: 443 }
      - { host: tcp.example.com, port: 5432, protocol: tcp }
    binaries: [{ path: /usr/bin/curl }]
"#,
        );
        assert_eq!(
            run(&p, "raw.example.com", "DELETE", "/x"),
            L7Outcome::NotInspected
        );
        assert_eq!(
            run_port(&p, "tcp.example.com", 5432, "GET", "/"),
            L7Outcome::NotInspected
        );
    }

    #[test]
    fn nothing_matched_is_a_deny() {
        assert_eq!(
            decide(&[], "GET", "/x", &[]),
            deny(NO_POLICY, "GET /x not permitted by policy")
        );
    }

    #[test]
    fn an_l7_endpoint_makes_a_parallel_l4_grant_inspected() {
        // OpenShell's rego only allows what some L7 rule allows once any
        // matching endpoint is L7; the L4 grant adds nothing.
        let p = policy(
            r#"
  a_l4:
    endpoints: [{ host: api.example.com, port: 443 }]
    binaries: [{ path: /usr/bin/curl }]
  b_l7:
    endpoints:
      - { host: api.example.com, port: 443, protocol: rest, access: read-only }
"#,
        );
        assert_eq!(run(&p, "api.example.com", "GET", "/x"), allow("b_l7"));
        assert_eq!(
            run(&p, "api.example.com", "POST", "/x"),
            deny("b_l7", "POST /x not permitted by policy")
        );
    }

    const SCOPED: &str = r#"
  scoped:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        path: "/v1/admin/**"
        rules: [{ allow: { method: GET, path: "/v1/admin/status" } }]
      - host: api.example.com
        port: 443
        protocol: rest
        path: "/v1/**"
        enforcement: audit
        rules: [{ allow: { method: GET, path: "/v1/**" } }]
    binaries: [{ path: /usr/bin/curl }]
"#;

    #[test]
    fn the_most_specific_scope_routes_and_its_mode_applies() {
        let p = policy(SCOPED);
        let h = "api.example.com";
        assert_eq!(run(&p, h, "GET", "/v1/admin/status"), allow("scoped"));
        // Allow from any candidate: the broader endpoint allows GET.
        assert_eq!(run(&p, h, "GET", "/v1/admin/users"), allow("scoped"));
        // Routed to the enforcing admin scope: denied.
        assert_eq!(
            run(&p, h, "POST", "/v1/admin/users"),
            deny("scoped", "POST /v1/admin/users not permitted by policy")
        );
        // Routed to the auditing `/v1/**` scope: audited.
        assert_eq!(
            run(&p, h, "POST", "/v1/items"),
            audit("scoped", "POST /v1/items not permitted by policy")
        );
        // No scope covers these (`/v1/**` does not match `/v1`).
        assert_eq!(run(&p, h, "GET", "/v2/x"), deny("scoped", NO_PATH_MATCHED));
        assert_eq!(run(&p, h, "GET", "/v1"), deny("scoped", NO_PATH_MATCHED));
    }

    #[test]
    fn route_selection() {
        let p = policy(SCOPED);
        let hostnames = ["api.example.com".to_string()];
        let binaries = [Path::new("/usr/bin/curl")];
        let req = L4Request {
            hostnames: &hostnames,
            ip: IP,
            port: 443,
            binaries: &binaries,
        };
        let m = p.matching_endpoints(&req);
        assert_eq!(route(&m, "/v1/admin/x").map(|r| r.endpoint_index), Some(0));
        assert_eq!(route(&m, "/v1/x").map(|r| r.endpoint_index), Some(1));
        assert!(route(&m, "/v2").is_none());
    }

    #[test]
    fn scope_ties_prefer_enforcement_then_key_order() {
        let p = policy(
            r#"
  a_audit:
    endpoints:
      - { host: api.example.com, port: 443, protocol: rest, path: "/x/**",
          enforcement: audit, access: read-only }
  b_enforce:
    endpoints:
      - { host: api.example.com, port: 443, protocol: rest, path: "/x/**",
          access: read-only }
  c_enforce:
    endpoints:
      - { host: api.example.com, port: 443, protocol: rest, path: "/x/**",
          access: read-only }
"#,
        );
        assert_eq!(
            run(&p, "api.example.com", "POST", "/x/y"),
            deny("b_enforce", "POST /x/y not permitted by policy")
        );
        assert_eq!(run(&p, "api.example.com", "GET", "/x/y"), allow("a_audit"));
    }

    #[test]
    fn a_deny_rule_anywhere_blocks_an_allow_elsewhere() {
        let p = policy(
            r#"
  broad:
    endpoints:
      - { host: api.example.com, port: 443, protocol: rest, access: full }
  guard:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        access: read-only
        deny_rules: [{ method: "*", path: "/secrets/**" }]
  lax:
    endpoints:
      - host: api.example.com
        port: 443
        protocol: rest
        enforcement: audit
        access: read-only
        deny_rules: [{ method: "*", path: "/secrets/**" }]
"#,
        );
        // The enforcing owner of a matching deny rule decides, not the
        // auditing one.
        assert_eq!(
            run(&p, "api.example.com", "GET", "/secrets/k"),
            deny("guard", "GET /secrets/k blocked by deny rule")
        );
        assert_eq!(
            run(&p, "api.example.com", "DELETE", "/other"),
            allow("broad")
        );
    }

    #[test]
    fn encoded_slashes_follow_the_route() {
        let p = policy(
            r#"
  gitlab:
    endpoints:
      - host: gitlab.example.com
        port: 443
        protocol: rest
        path: "/api/v4/projects/**"
        allow_encoded_slash: true
        access: read-only
      - host: gitlab.example.com
        port: 443
        protocol: rest
        access: read-only
"#,
        );
        let h = "gitlab.example.com";
        assert_eq!(
            run(&p, h, "GET", "/api/v4/projects/group%2fproj/issues"),
            allow("gitlab")
        );
        // The other route does not allow it, though canonicalisation did.
        assert_eq!(
            run(&p, h, "GET", "/raw/group%2Fproj"),
            deny(
                "gitlab",
                "GET /raw/group%2Fproj: an encoded '/' or '\\' is not allowed on this endpoint \
                 (allow_encoded_slash is off)"
            )
        );
        assert!(!allow_encoded_slash(&[]));
    }

    #[test]
    fn placeholders_are_redacted_before_matching() {
        let p = policy(
            r#"
  telegram:
    endpoints:
      - host: api.telegram.org
        port: 443
        protocol: rest
        rules:
          - allow: { method: POST, path: "/bot*/sendMessage" }
          - allow: { method: GET, path: "/file", query: { key: "*CREDENTIAL*" } }
"#,
        );
        let h = "api.telegram.org";
        assert_eq!(
            run(
                &p,
                h,
                "POST",
                "/botopenshell:resolve:env:TG_TOKEN/sendMessage"
            ),
            allow("telegram")
        );
        assert_eq!(
            run(&p, h, "GET", "/file?key=openshell:resolve:env:K"),
            allow("telegram")
        );
        match run(&p, h, "POST", "/botopenshell%3Aresolve%3Aenv%3ATG/other") {
            L7Outcome::Deny { reason, .. } => {
                assert_eq!(
                    reason,
                    "POST /bot[CREDENTIAL]/other not permitted by policy"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn websocket_endpoints_decide_the_upgrade_and_frames() {
        let p = policy(
            r#"
  ws:
    endpoints:
      - { host: ws.example.com, port: 443, protocol: websocket, access: read-write }
"#,
        );
        assert_eq!(run(&p, "ws.example.com", "GET", "/socket"), allow("ws"));
        assert_eq!(
            run(&p, "ws.example.com", "WEBSOCKET_TEXT", "/socket"),
            allow("ws")
        );
        assert!(matches!(
            run(&p, "ws.example.com", "POST", "/socket"),
            L7Outcome::Deny { .. }
        ));
    }

    #[test]
    fn encoded_slash_detection() {
        assert!(has_encoded_slash("/a%2Fb"));
        assert!(has_encoded_slash("/a%2fb"));
        assert!(has_encoded_slash("/a%5Cb"));
        assert!(has_encoded_slash("/a%5c"));
        assert!(!has_encoded_slash("/a%252F"));
        assert!(!has_encoded_slash("/a%2Eb/%5D"));
        assert!(!has_encoded_slash("%2"));
    }
}
