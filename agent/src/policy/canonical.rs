//! The canonical form of a policy (reference §1.8): the normalised
//! document as JSON, map keys sorted, hashed with SHA-256.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};

use super::l7;
use super::schema::{Endpoint, Rule};

/// The document as parsed and normalised: `port` folded into sorted
/// `ports`, `name` defaulted to the key, hosts lowercased, `enforcement`
/// spelled out (so a copy loads the same in OpenShell, whose default is
/// audit), default-valued fields left out.
pub(crate) fn document_json(rules: &[Rule], sections: &BTreeMap<String, Json>) -> Json {
    let mut top = Map::new();
    top.insert("version".into(), json!(1));
    top.insert(
        "network_policies".into(),
        Json::Object(
            rules
                .iter()
                .map(|r| (r.key.clone(), rule_json(r)))
                .collect(),
        ),
    );
    for (k, v) in sections {
        top.insert(k.clone(), v.clone());
    }
    sort_keys(Json::Object(top))
}

fn rule_json(r: &Rule) -> Json {
    json!({
        "name": r.name,
        "endpoints": r.endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
        "binaries": r.binaries.iter().map(|b| json!({ "path": b })).collect::<Vec<_>>(),
    })
}

fn endpoint_json(e: &Endpoint) -> Json {
    let s = &e.summary;
    let mut o = Map::new();
    if !s.host_pattern.is_empty() {
        o.insert("host".into(), json!(s.host_pattern));
    }
    o.insert("ports".into(), json!(s.ports));
    if let Some(p) = &e.path {
        o.insert("path".into(), json!(p));
    }
    if !s.protocol.is_empty() {
        o.insert("protocol".into(), json!(s.protocol));
    }
    if !e.tls.is_empty() {
        o.insert("tls".into(), json!(e.tls));
    }
    o.insert(
        "enforcement".into(),
        json!(if s.enforcement_audit {
            "audit"
        } else {
            "enforce"
        }),
    );
    if let Some(cfg) = &e.l7 {
        if let Some(a) = cfg.access {
            o.insert("access".into(), json!(a.as_str()));
        }
        if !cfg.rules.is_empty() {
            o.insert("rules".into(), l7::rules_json(&cfg.rules, true));
        }
        if !cfg.deny_rules.is_empty() {
            o.insert("deny_rules".into(), l7::rules_json(&cfg.deny_rules, false));
        }
    }
    if !s.allowed_ips.is_empty() {
        let ips: Vec<String> = s.allowed_ips.iter().map(ToString::to_string).collect();
        o.insert("allowed_ips".into(), json!(ips));
    }
    for (key, on) in [
        ("allow_encoded_slash", e.allow_encoded_slash),
        (
            "websocket_credential_rewrite",
            e.websocket_credential_rewrite,
        ),
        (
            "request_body_credential_rewrite",
            e.request_body_credential_rewrite,
        ),
        (
            "allow_uninspected_credentials",
            s.allow_uninspected_credentials,
        ),
    ] {
        if on {
            o.insert(key.into(), json!(true));
        }
    }
    Json::Object(o)
}

/// Rebuilds every object with its keys in sorted order, so the result is
/// sorted even if serde_json's `preserve_order` feature gets unified in.
pub(crate) fn sort_keys(v: Json) -> Json {
    match v {
        Json::Object(m) => {
            let mut entries: Vec<(String, Json)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Json::Array(a) => Json::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Compact JSON with object keys sorted at every level, written here
/// rather than trusting the map type's iteration order.
pub(crate) fn canonical_bytes(v: &Json) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn write(v: &Json, out: &mut Vec<u8>) {
    match v {
        Json::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Json::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(&Json::String(k.clone()), out);
                out.push(b':');
                if let Some(item) = m.get(k) {
                    write(item, out);
                }
            }
            out.push(b'}');
        }
        // Scalars: serde_json's own compact, escaped rendering.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sort_keys_at_every_level() {
        let v = json!({"b": {"z": 1, "a": [{"y": true, "x": null}]}, "a": "q\""});
        assert_eq!(
            String::from_utf8(canonical_bytes(&v)).unwrap(),
            r#"{"a":"q\"","b":{"a":[{"x":null,"y":true}],"z":1}}"#
        );
    }

    #[test]
    fn bytes_match_serde_json_compact_for_sorted_maps() {
        let v = sort_keys(json!({"k": [1, 2.5, "é\n"], "e": {}}));
        assert_eq!(canonical_bytes(&v), serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
