//! How operators see a proposed rule (contract §1 "Operator output",
//! reference §8.1): `host:port [L4]`, `host:port [L7 rest,
//! access=read-only]`, `host:port [L7 rest, allow PUT /v1/x, deny DELETE
//! /v1/x]`. Shared by the CLI and the TUI.

use serde_json::Value;

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn method_path(rule: &Value) -> String {
    format!(
        "{} {}",
        str_at(rule, "method").unwrap_or("*"),
        str_at(rule, "path").unwrap_or("*")
    )
}

/// One endpoint of a rule in canonical policy JSON.
pub fn endpoint(ep: &Value) -> String {
    let host = str_at(ep, "host").unwrap_or("*");
    let ports: Vec<String> = ep
        .get("ports")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(Value::as_u64)
                .map(|p| p.to_string())
                .collect()
        })
        .unwrap_or_default();
    let ports = if ports.is_empty() {
        ep.get("port")
            .and_then(Value::as_u64)
            .map_or_else(|| "*".to_string(), |p| p.to_string())
    } else {
        ports.join(",")
    };
    let layer = match str_at(ep, "protocol") {
        None => "L4".to_string(),
        Some("rest") => "L7 rest".to_string(),
        Some(other) => other.to_string(),
    };
    let mut parts = vec![layer];
    if let Some(access) = str_at(ep, "access") {
        parts.push(format!("access={access}"));
    }
    for rule in ep
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(allow) = rule.get("allow") {
            parts.push(format!("allow {}", method_path(allow)));
        }
    }
    for deny in ep
        .get("deny_rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(format!("deny {}", method_path(deny)));
    }
    if str_at(ep, "tls") == Some("skip") {
        parts.push("tls=skip".into());
    }
    if str_at(ep, "enforcement") == Some("audit") {
        parts.push("enforcement=audit".into());
    }
    format!("{host}:{ports} [{}]", parts.join(", "))
}

/// Every endpoint of a rule.
pub fn endpoints(rule: &Value) -> Vec<String> {
    rule.get("endpoints")
        .and_then(Value::as_array)
        .map(|eps| eps.iter().map(endpoint).collect())
        .unwrap_or_default()
}

/// The binaries of a rule; `(any binary)` when it names none.
pub fn binaries(rule: &Value) -> Vec<String> {
    let list: Vec<String> = rule
        .get("binaries")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|b| b.get("path").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        vec!["(any binary)".into()]
    } else {
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_the_reference_examples() {
        assert_eq!(
            endpoint(
                &json!({"host": "host.example.test", "ports": [443], "enforcement": "enforce"})
            ),
            "host.example.test:443 [L4]"
        );
        assert_eq!(
            endpoint(
                &json!({"host": "host.example.test", "ports": [443], "protocol": "rest", "access": "read-only"})
            ),
            "host.example.test:443 [L7 rest, access=read-only]"
        );
        assert_eq!(
            endpoint(&json!({
                "host": "host.example.test", "ports": [443], "protocol": "rest",
                "rules": [{"allow": {"method": "PUT", "path": "/v1/example/resource"}}],
                "deny_rules": [{"method": "DELETE", "path": "/v1/example/resource"}]
            })),
            "host.example.test:443 [L7 rest, allow PUT /v1/example/resource, deny DELETE /v1/example/resource]"
        );
    }

    #[test]
    fn missing_parts_render_as_stars_and_flags_show() {
        assert_eq!(
            endpoint(
                &json!({"ports": [80, 8080], "protocol": "websocket", "rules": [{"allow": {}}], "tls": "skip", "enforcement": "audit"})
            ),
            "*:80,8080 [websocket, allow * *, tls=skip, enforcement=audit]"
        );
        assert_eq!(endpoint(&json!({"host": "h", "port": 22})), "h:22 [L4]");
    }

    #[test]
    fn binaries_say_when_any_binary_is_meant() {
        assert_eq!(
            binaries(&json!({"binaries": [{"path": "/usr/bin/curl"}]})),
            ["/usr/bin/curl"]
        );
        assert_eq!(binaries(&json!({})), ["(any binary)"]);
    }
}
