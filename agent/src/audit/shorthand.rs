//! The one-line shorthand rendering of an event (reference §7.4).
//!
//! `GET /v1/denials` serves these lines to agents and keys off the literal
//! substrings ` OCSF ` and ` DENIED `, so the grammar is API: change it only
//! together with that reader.

use std::borrow::Cow;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::enums::{Action, Status};
use super::event::{AppLifecycle, AuditEvent, ConfigStateChange, HttpActivity, NetworkActivity};
use super::text::{bracket_ipv6, one_line, redact_query_text, truncate};

/// Longest `[reason:...]` text, in bytes, before `...`.
const MAX_REASON_BYTES: usize = 256;
/// Longest `[msg:...]` text, in bytes, before `...`.
const MAX_MSG_BYTES: usize = 120;

/// Unmapped keys Portcullis adds to every traffic event. They are context
/// for JSON readers, not detail, so the HTTP bracket leaves them out and
/// the line stays what OpenShell prints.
const CONTEXT_KEYS: &[&str] = &["sandbox", "engine", "policy_version", "policy_hash"];

/// Unmapped keys shown by a CONFIG line, in this order, with their labels.
const CONFIG_KEYS: &[(&str, &str)] = &[
    ("auto", "auto"),
    ("source", "source"),
    ("prover_delta", "prover_delta"),
    ("resolved_from", "resolved_from"),
    ("policy_version", "version"),
    ("policy_hash", "hash"),
];

/// The event time as a UTC date-time, if representable.
pub(crate) fn utc_datetime(time_ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC. An unrepresentable time renders as
/// question marks instead of failing: the line still gets written.
pub fn format_timestamp(time_ms: i64) -> String {
    match utc_datetime(time_ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        None => "????-??-??T??:??:??.???Z".to_string(),
    }
}

/// The full log line: `<timestamp> OCSF <body>` (no trailing newline).
pub fn shorthand_line(event: &AuditEvent) -> String {
    format!(
        "{} OCSF {}",
        format_timestamp(event.base().time),
        shorthand(event)
    )
}

/// The shorthand body of an event.
pub fn shorthand(event: &AuditEvent) -> String {
    match event {
        AuditEvent::Network(e) => network(e),
        AuditEvent::Http(e) => http(e),
        AuditEvent::Config(e) => config(e),
        AuditEvent::Lifecycle(e) => lifecycle(e),
        AuditEvent::Finding(e) => finding(e),
    }
}

/// `FINDING:<DISPOSITION> <SEV> "<title>" [type:<uid> k:v ...]`
fn finding(e: &super::event::DetectionFinding) -> String {
    let disposition = e.disposition.caption().to_uppercase();
    let sev = e.base.severity.tag();
    let title = one_line(&e.finding_info.title).replace('"', "\\\"");
    let mut parts = vec![format!("type:{}", e.finding_info.uid)];
    for key in ["credential_key", "provider"] {
        if let Some(value) = e.base.unmapped.get(key).and_then(Value::as_str) {
            parts.push(format!("{key}:{}", one_line(value)));
        }
    }
    format!(
        "FINDING:{disposition} {sev} \"{title}\" [{}]",
        parts.join(" ")
    )
}

fn network(e: &NetworkActivity) -> String {
    let activity = e.base.activity_name.to_uppercase();
    let sev = e.base.severity.tag();
    let action = e.traffic.action.caption().to_uppercase();
    let actor = e
        .traffic
        .actor
        .as_ref()
        .map(|a| format!("{}({})", one_line(&a.process.name), a.process.pid));
    let dst = e.traffic.dst_endpoint.as_ref().and_then(|ep| {
        let host = ep.display_host()?;
        let mut out = bracket_ipv6(&one_line(&host));
        if let Some(port) = ep.port {
            out.push_str(&format!(":{port}"));
        }
        if let Some(info) = &e.traffic.connection_info {
            out.push('/');
            out.push_str(info.protocol_name);
        }
        Some(out)
    });
    let arrow = match (actor, dst) {
        (Some(a), Some(d)) => format!(" {a} -> {d}"),
        (Some(only), None) | (None, Some(only)) => format!(" {only}"),
        (None, None) => String::new(),
    };
    let rule = rule_tag(e.traffic.firewall_rule.as_ref());
    let reason = if e.traffic.action == Action::Denied {
        reason_text(
            e.base
                .status_detail
                .as_deref()
                .unwrap_or(e.base.message.as_str()),
        )
        .map(|r| format!(" [reason:{r}]"))
        .unwrap_or_default()
    } else {
        String::new()
    };
    let detail = format!(" {action}{arrow}");
    // `[msg:...]` only when nothing else explains the event; with an action
    // always present that is never the case for Portcullis events, but the
    // rule is kept for events built by hand.
    let msg = if detail.trim().is_empty() && rule.is_empty() && reason.is_empty() {
        msg_tag(&e.base.message)
    } else {
        String::new()
    };
    format!("NET:{activity} {sev}{detail}{rule}{reason}{msg}")
}

fn http(e: &HttpActivity) -> String {
    let method = one_line(&e.http_request.http_method).to_uppercase();
    let sev = e.base.severity.tag();
    let action = e.traffic.action.caption().to_uppercase();
    let actor = e
        .traffic
        .actor
        .as_ref()
        .map(|a| format!("{}({}) -> ", one_line(&a.process.name), a.process.pid))
        .unwrap_or_default();
    let url = one_line(&e.http_request.url.display()).into_owned();
    let url = redact_query_text(&url).into_owned();
    let rule = rule_tag(e.traffic.firewall_rule.as_ref());

    let mut parts = unmapped_pairs(&e.base.unmapped);
    if e.traffic.action == Action::Denied
        && let Some(reason) = reason_text(
            e.base
                .status_detail
                .as_deref()
                .unwrap_or(e.base.message.as_str()),
        )
    {
        parts.push(format!("reason:{reason}"));
    }
    let bracket = if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(" "))
    };
    format!("HTTP:{method} {sev} {action} {actor}{method} {url}{rule}{bracket}")
}

fn config(e: &ConfigStateChange) -> String {
    let label = e
        .base
        .unmapped
        .get("state_label")
        .and_then(Value::as_str)
        .unwrap_or(e.state.caption());
    let label = one_line(label).to_uppercase();
    let sev = e.base.severity.tag();
    let message = one_line(&e.base.message);
    let parts: Vec<String> = CONFIG_KEYS
        .iter()
        .filter_map(|(key, shown)| {
            let value = e.base.unmapped.get(*key)?.as_str()?;
            Some(format!("{shown}:{}", one_line(value)))
        })
        .collect();
    let bracket = if parts.is_empty() {
        String::new()
    } else {
        format!(" [{}]", parts.join(" "))
    };
    format!("CONFIG:{label} {sev} {message}{bracket}")
}

fn lifecycle(e: &AppLifecycle) -> String {
    let activity = e.base.activity_name.to_uppercase();
    let sev = e.base.severity.tag();
    let status = e
        .base
        .status
        .map(|s| s.caption().to_lowercase())
        .unwrap_or_default();
    // Portcullis addition: a failed stop says why.
    let reason = match (e.base.status, e.base.status_detail.as_deref()) {
        (Some(Status::Failure), Some(detail)) => reason_text(detail)
            .map(|r| format!(" [reason:{r}]"))
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "LIFECYCLE:{activity} {sev} {} {status}{reason}",
        one_line(e.app.name)
    )
}

fn rule_tag(rule: Option<&super::event::FirewallRule>) -> String {
    rule.map(|r| {
        format!(
            " [policy:{} engine:{}]",
            one_line(&r.name),
            one_line(&r.rule_type)
        )
    })
    .unwrap_or_default()
}

/// Reason text for `[reason:...]`: single line, no query, at most 256
/// bytes plus `...`. `None` when empty.
fn reason_text(text: &str) -> Option<String> {
    if text.trim().is_empty() {
        return None;
    }
    let redacted = redact_query_text(text);
    let flat = one_line(&redacted);
    Some(truncate(&flat, MAX_REASON_BYTES).into_owned())
}

fn msg_tag(text: &str) -> String {
    if text.trim().is_empty() {
        return String::new();
    }
    let redacted = redact_query_text(text);
    let flat = one_line(&redacted);
    format!(" [msg:{}]", truncate(&flat, MAX_MSG_BYTES))
}

/// `k:v` for every non-context unmapped entry, in key order.
fn unmapped_pairs(unmapped: &Map<String, Value>) -> Vec<String> {
    unmapped
        .iter()
        .filter(|(k, _)| !CONTEXT_KEYS.contains(&k.as_str()))
        .map(|(k, v)| {
            let value: Cow<'_, str> = match v {
                Value::String(s) => Cow::Borrowed(s),
                other => Cow::Owned(other.to_string()),
            };
            format!("{}:{}", one_line(k), one_line(&value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::enums::{NetworkActivityId, Severity};
    use crate::audit::event::{
        ConnectionFacts, DenyCause, HttpRequestFacts, Inspection, PolicyFacts, PolicyLoad,
        ProcessFacts, Transport,
    };
    use std::net::{IpAddr, Ipv4Addr};

    /// 2025-03-15T14:00:00.000Z
    const T: i64 = 1_742_047_200_000;

    fn facts(host: &str, port: u16, policy: Option<&str>, reason: Option<&str>) -> ConnectionFacts {
        ConnectionFacts {
            sandbox: "sb-1".into(),
            process: Some(ProcessFacts {
                binary: "/usr/bin/curl".into(),
                pid: 64,
                ..ProcessFacts::default()
            }),
            dst_host: Some(host.into()),
            dst_ip: Some(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))),
            dst_port: port,
            policy: policy.map(Into::into),
            reason: reason.map(Into::into),
            policy_version: Some("v3".into()),
            policy_hash: Some("abc".into()),
            ..ConnectionFacts::default()
        }
    }

    fn line(event: impl Into<AuditEvent>) -> String {
        shorthand(&event.into())
    }

    #[test]
    fn timestamp_format() {
        assert_eq!(format_timestamp(T), "2025-03-15T14:00:00.000Z");
        assert_eq!(format_timestamp(T + 1_234), "2025-03-15T14:00:01.234Z");
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(i64::MAX), "????-??-??T??:??:??.???Z");
        assert_eq!(format_timestamp(i64::MIN), "????-??-??T??:??:??.???Z");
    }

    #[test]
    fn net_denied_matches_reference_example() {
        let f = facts(
            "httpbin.org",
            443,
            None,
            Some("endpoint httpbin.org:443 is not allowed by any policy"),
        );
        assert_eq!(
            line(NetworkActivity::denied(&f, DenyCause::Policy)),
            "NET:OPEN [MED] DENIED /usr/bin/curl(64) -> httpbin.org:443 [policy:- engine:opa] \
             [reason:endpoint httpbin.org:443 is not allowed by any policy]"
        );
    }

    #[test]
    fn net_allowed_has_no_reason() {
        let f = facts("api.example.com", 443, Some("example"), Some("ignored"));
        assert_eq!(
            line(NetworkActivity::allowed(&f, Inspection::L4Only)),
            "NET:OPEN [INFO] ALLOWED /usr/bin/curl(64) -> api.example.com:443 \
             [policy:example engine:opa]"
        );
    }

    #[test]
    fn net_denied_without_detail_falls_back_to_message() {
        let f = facts("10.0.0.5", 8080, None, None);
        assert_eq!(
            line(NetworkActivity::denied(&f, DenyCause::Policy)),
            "NET:OPEN [MED] DENIED /usr/bin/curl(64) -> 10.0.0.5:8080 [policy:- engine:opa] \
             [reason:CONNECT denied 10.0.0.5:8080]"
        );
    }

    #[test]
    fn net_kernel_refusal_shows_transport() {
        let mut f = facts("x", 5432, None, Some("no policy allows this destination"));
        f.dst_host = None;
        f.protocol = Transport::Tcp;
        let l = shorthand_line(&NetworkActivity::kernel_refused(&f).at(T).into());
        assert_eq!(
            l,
            "2025-03-15T14:00:00.000Z OCSF NET:REFUSE [MED] DENIED /usr/bin/curl(64) -> \
             93.184.216.34:5432/tcp [policy:- engine:ebpf] [reason:no policy allows this destination]"
        );
        assert!(l.contains(" OCSF ") && l.contains(" DENIED "));
    }

    #[test]
    fn net_arrow_degrades_when_parts_are_missing() {
        let mut f = facts("h", 1, None, None);
        f.process = None;
        let l = line(NetworkActivity::denied(&f, DenyCause::Policy));
        assert!(
            l.starts_with("NET:OPEN [MED] DENIED h:1 [policy:- engine:opa]"),
            "{l}"
        );

        let mut e = NetworkActivity::denied(&facts("h", 1, None, None), DenyCause::Policy);
        e.traffic.dst_endpoint = None;
        let l = line(e);
        assert!(
            l.starts_with("NET:OPEN [MED] DENIED /usr/bin/curl(64) [policy:"),
            "{l}"
        );
    }

    #[test]
    fn net_msg_tag_only_without_other_detail() {
        let mut e = NetworkActivity::allowed(&facts("h", 1, None, None), Inspection::L4Only);
        e.traffic.actor = None;
        e.traffic.dst_endpoint = None;
        e.traffic.firewall_rule = None;
        e.base.activity_id = NetworkActivityId::Close.id();
        e.base.activity_name = NetworkActivityId::Close.caption();
        // ALLOWED is still detail, so no [msg:].
        assert_eq!(line(e), "NET:CLOSE [INFO] ALLOWED");
    }

    #[test]
    fn http_denied_matches_reference_example() {
        let f = facts(
            "api.github.com",
            443,
            Some("github_api_readonly"),
            Some("PUT /repos/o/r/contents/x not permitted by policy"),
        );
        let mut e = HttpActivity::denied(
            &f,
            &HttpRequestFacts {
                method: "PUT".into(),
                scheme: "http".into(),
                path: "/repos/o/r/contents/x".into(),
            },
        );
        // The reference example has no actor.
        e.traffic.actor = None;
        assert_eq!(
            line(e),
            "HTTP:PUT [MED] DENIED PUT http://api.github.com:443/repos/o/r/contents/x \
             [policy:github_api_readonly engine:l7] [reason:L7_REQUEST deny PUT \
             api.github.com:443/repos/o/r/contents/x reason=PUT /repos/o/r/contents/x not \
             permitted by policy]"
        );
    }

    #[test]
    fn http_allowed_with_actor_and_unmapped() {
        let f = facts("api.github.com", 443, Some("gh"), None);
        let e = HttpActivity::allowed(
            &f,
            &HttpRequestFacts {
                method: "GET".into(),
                scheme: "https".into(),
                path: "/user?token=x".into(),
            },
        )
        .with_unmapped("rule", "read-only");
        assert_eq!(
            line(e),
            "HTTP:GET [INFO] ALLOWED /usr/bin/curl(64) -> GET https://api.github.com/user \
             [policy:gh engine:l7] [rule:read-only]"
        );
    }

    #[test]
    fn http_denied_reason_joins_unmapped_bracket() {
        let f = facts("h", 8080, Some("p"), Some("blocked by deny rule"));
        let e = HttpActivity::denied(
            &f,
            &HttpRequestFacts {
                method: "DELETE".into(),
                scheme: "http".into(),
                path: "/x".into(),
            },
        )
        .with_unmapped("rule", "no-deletes");
        let l = line(e);
        assert!(
            l.ends_with(
                "[policy:p engine:l7] [rule:no-deletes reason:L7_REQUEST deny DELETE h:8080/x \
                 reason=blocked by deny rule]"
            ),
            "{l}"
        );
        assert!(l.contains(" DENIED "));
    }

    #[test]
    fn config_loaded_line() {
        let policy = PolicyFacts {
            sandbox: "sb".into(),
            path: Some("/etc/p.yaml".into()),
            version: Some("v4".into()),
            hash: Some("deadbeef".into()),
        };
        let e = ConfigStateChange::policy_loaded(&policy, PolicyLoad::Reload);
        assert_eq!(
            line(e),
            "CONFIG:LOADED [INFO] Policy reloaded successfully [policy_hash:deadbeef] \
             [version:v4 hash:deadbeef]"
        );
    }

    #[test]
    fn config_keys_in_fixed_order() {
        let e = ConfigStateChange::new(
            "sb",
            crate::audit::enums::State::Other,
            "approved",
            Severity::Informational,
            "gateway approved draft chunk c1",
        )
        .with_unmapped("policy_hash", "h")
        .with_unmapped("policy_version", "v2")
        .with_unmapped("resolved_from", "agent")
        .with_unmapped("source", "prover")
        .with_unmapped("auto", "true")
        .with_unmapped("prover_delta", "none")
        .with_unmapped("not_shown", "x")
        .with_unmapped("chunk_id", 5);
        assert_eq!(
            line(e),
            "CONFIG:APPROVED [INFO] gateway approved draft chunk c1 [auto:true source:prover \
             prover_delta:none resolved_from:agent version:v2 hash:h]"
        );
    }

    #[test]
    fn config_failed_line_has_no_bracket_without_keys() {
        let policy = PolicyFacts {
            sandbox: "sb".into(),
            ..PolicyFacts::default()
        };
        let e = ConfigStateChange::policy_failed(&policy, "bad yaml");
        assert_eq!(line(e), "CONFIG:FAILED [HIGH] Policy load failed: bad yaml");
    }

    #[test]
    fn lifecycle_lines() {
        assert_eq!(
            line(AppLifecycle::started()),
            "LIFECYCLE:START [INFO] Portcullis success"
        );
        assert_eq!(
            line(AppLifecycle::stopped(Some("netns vanished"))),
            "LIFECYCLE:STOP [HIGH] Portcullis failure [reason:netns vanished]"
        );
    }

    #[test]
    fn reason_is_truncated_and_flattened() {
        let long = format!("line1\r\nline2 {}", "é".repeat(300));
        let f = facts("h", 1, None, Some(&long));
        let mut e = NetworkActivity::denied(&f, DenyCause::Policy);
        // Bypass constructor bounds to exercise the shorthand's own limit.
        e.base.status_detail = Some(long.clone());
        let l = line(e);
        let reason = l.split("[reason:").nth(1).unwrap();
        let reason = reason.strip_suffix(']').unwrap();
        assert!(reason.starts_with("line1  line2 "));
        assert!(reason.ends_with("..."));
        assert!(reason.len() <= MAX_REASON_BYTES + 3);
        assert!(!l.contains('\n') && !l.contains('\r'));
    }

    #[test]
    fn query_in_hand_built_reason_is_redacted() {
        let mut e = NetworkActivity::denied(&facts("h", 1, None, None), DenyCause::Policy);
        e.base.status_detail = Some("GET /x?token=s3cret".into());
        assert!(line(e).ends_with("[reason:GET /x?[redacted]]"));
    }

    #[test]
    fn every_denial_line_contains_denials_markers() {
        let f = facts("h", 443, None, None);
        let req = HttpRequestFacts {
            method: "GET".into(),
            scheme: "https".into(),
            path: "/".into(),
        };
        let events: Vec<AuditEvent> = vec![
            NetworkActivity::denied(&f, DenyCause::Policy).into(),
            NetworkActivity::denied(
                &f,
                DenyCause::Ssrf(crate::audit::event::SsrfKind::InternalAddress),
            )
            .into(),
            NetworkActivity::denied(&f, DenyCause::TlsUnavailable).into(),
            NetworkActivity::denied(&f, DenyCause::UninspectedCredentials).into(),
            NetworkActivity::kernel_refused(&f).into(),
            HttpActivity::denied(&f, &req).into(),
        ];
        for e in &events {
            let l = shorthand_line(e);
            assert!(l.contains(" OCSF ") && l.contains(" DENIED "), "{l}");
        }
        let allowed = shorthand_line(&NetworkActivity::allowed(&f, Inspection::L7).into());
        assert!(!allowed.contains(" DENIED "));
        let audited = shorthand_line(&HttpActivity::audited(&f, &req).into());
        assert!(!audited.contains(" DENIED "));
    }
}

#[cfg(test)]
mod finding_tests {
    use crate::audit::{AuditEvent, ConnectionFacts, DetectionFinding, shorthand};

    #[test]
    fn a_credential_mismatch_reads_as_a_blocked_finding_without_values() {
        let facts = ConnectionFacts {
            sandbox: "sb".into(),
            dst_host: Some("other.example.test".into()),
            dst_port: 443,
            ..ConnectionFacts::default()
        };
        let e = DetectionFinding::credential_endpoint_mismatch(&facts, "GITHUB_TOKEN", "gh");
        let line = shorthand(&AuditEvent::Finding(e.clone()));
        assert_eq!(
            line,
            "FINDING:BLOCKED [HIGH] \"credential GITHUB_TOKEN of provider gh sent toward other.example.test:443\" [type:portcullis.provider_credential.endpoint_mismatch credential_key:GITHUB_TOKEN provider:gh]"
        );
        let json = AuditEvent::Finding(e).to_json().unwrap();
        assert!(json.contains("\"class_uid\":2004"), "{json}");
        assert!(json.contains("\"sandbox\":\"sb\""), "{json}");
    }
}
