//! The body of `POST /v1/proposals` (reference §5.3): parsed, checked
//! against the proposal norms, and converted to Portcullis policy form.
//!
//! Unknown JSON fields are ignored, as OpenShell does; the fields that can
//! be proposed are copied and nothing else. Proto3-style defaults (`""`,
//! `0`, `false`, `[]`, `null`) mean "not given", so a client that writes
//! every field still proposes the same rule. The converted rule is checked
//! further by the policy parser; this module only enforces what is
//! specific to proposals and names the JSON field at fault.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::policy::ssrf;

/// Largest body accepted (the HTTP layer answers 413 before this).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `intent_summary`, in characters.
pub const MAX_INTENT_SUMMARY_CHARS: usize = 2000;
/// Longest rule name, in bytes (names are ASCII).
pub const MAX_RULE_NAME_LEN: usize = 128;
/// Prefix reserved for rules composed from providers.
const PROVIDER_RULE_PREFIX: &str = "_provider_";

/// A proposal, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The agent's explanation for the reviewer; empty when not given.
    pub intent_summary: String,
    pub operations: Vec<Operation>,
}

/// One proposed change.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    AddRule {
        /// The `network_policies` key: `ruleName`, else `rule.name`.
        rule_name: String,
        /// The rule in Portcullis policy format:
        /// `{"name"?, "endpoints":[...], "binaries"?:[{"path"}]}`.
        rule: Value,
    },
    /// Ask the operator to attach an existing host-managed provider
    /// (contract §2.5).
    RequestProvider {
        provider_name: String,
        /// Empty when the agent did not say.
        provider_type: String,
    },
}

/// The operation kinds an agent may name, by JSON key.
#[derive(Clone, Copy)]
enum OperationKind {
    AddRule,
    RequestProvider,
}

const OPERATION_KINDS: [(&str, OperationKind); 2] = [
    ("addRule", OperationKind::AddRule),
    ("requestProvider", OperationKind::RequestProvider),
];

/// Parses and checks a proposal; the error is the 400 `invalid_proposal`
/// detail and names the field and the fix, e.g.
/// `operations[0].addRule.rule.endpoints[0].rules[0].allow.path: "/x?[redacted]" contains a query; propose the path only ("/x")`.
pub fn parse(body: &[u8]) -> Result<Proposal, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "body: {} bytes is over the {MAX_BODY_BYTES}-byte limit; propose fewer or smaller rules",
            body.len()
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "body: not UTF-8 (invalid byte at offset {}); send the proposal as UTF-8 JSON",
            e.valid_up_to()
        )
    })?;
    let root: Value = serde_json::from_str(text).map_err(|e| {
        format!("body: not valid JSON: {e}; send a JSON object with an `operations` list")
    })?;
    let Value::Object(root) = root else {
        return Err(format!(
            "body: expected a JSON object, found {}; send {{\"intent_summary\": \"...\", \"operations\": [...]}}",
            kind(&root)
        ));
    };
    let intent_summary = parse_intent_summary(root.get("intent_summary"))?;
    let operations = match root.get("operations") {
        None | Some(Value::Null) => {
            return Err(
                "operations: missing; add a list such as [{\"addRule\": {\"ruleName\": \"...\", \"rule\": {...}}}]"
                    .into(),
            );
        }
        Some(Value::Array(list)) if list.is_empty() => {
            return Err("operations: empty; propose at least one addRule operation".into());
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "operations: expected a list of operations, found {}",
                kind(other)
            ));
        }
    };
    let operations = operations
        .iter()
        .enumerate()
        .map(|(i, op)| parse_operation(&format!("operations[{i}]"), op))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Proposal {
        intent_summary,
        operations,
    })
}

fn parse_intent_summary(value: Option<&Value>) -> Result<String, String> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => {
            let chars = text.chars().count();
            if chars > MAX_INTENT_SUMMARY_CHARS {
                Err(format!(
                    "intent_summary: {chars} characters is too long; keep it to {MAX_INTENT_SUMMARY_CHARS} or fewer"
                ))
            } else {
                Ok(text.clone())
            }
        }
        Some(other) => Err(format!(
            "intent_summary: expected a string, found {}",
            kind(other)
        )),
    }
}

fn parse_operation(at: &str, op: &Value) -> Result<Operation, String> {
    let Value::Object(op) = op else {
        return Err(format!(
            "{at}: expected an object such as {{\"addRule\": {{...}}}}, found {}",
            kind(op)
        ));
    };
    let named: Vec<(&str, OperationKind)> = OPERATION_KINDS
        .iter()
        .copied()
        .filter(|(key, _)| op.get(*key).is_some_and(|v| !v.is_null()))
        .collect();
    match named.as_slice() {
        [(key, OperationKind::AddRule)] => parse_add_rule(&format!("{at}.{key}"), &op[*key]),
        [(key, OperationKind::RequestProvider)] => {
            parse_request_provider(&format!("{at}.{key}"), &op[*key])
        }
        [] if op.contains_key("add_rule") => Err(format!(
            "{at}: only addRule operations are accepted; write the key as `addRule` (camelCase)"
        )),
        [] => Err(format!(
            "{at}: only addRule operations are accepted; write {{\"addRule\": {{\"ruleName\": \"...\", \"rule\": {{...}}}}}}"
        )),
        _ => Err(format!(
            "{at}: names more than one operation; put each in its own entry of `operations`"
        )),
    }
}

fn parse_request_provider(at: &str, value: &Value) -> Result<Operation, String> {
    let req = object(at, value, "{\"providerName\": \"github\"}")?;
    let name_at = format!("{at}.providerName");
    let Some(provider_name) = optional_string(&name_at, req.get("providerName"))? else {
        return Err(format!(
            "{name_at}: missing; name the provider to attach, e.g. \"github\" (see GET /v1/providers for attached ones)"
        ));
    };
    let valid = !provider_name.is_empty()
        && provider_name.len() <= 63
        && provider_name.as_bytes()[0].is_ascii_alphanumeric()
        && provider_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{name_at}: \"{}\" is not a provider name (1-63 of a-z, 0-9, `-`, `_`)",
            provider_name.escape_default()
        ));
    }
    let type_at = format!("{at}.providerType");
    let provider_type = optional_string(&type_at, req.get("providerType"))?.unwrap_or_default();
    if provider_type.len() > 64 {
        return Err(format!("{type_at}: longer than 64 characters"));
    }
    Ok(Operation::RequestProvider {
        provider_name: provider_name.to_string(),
        provider_type: provider_type.to_string(),
    })
}

fn parse_add_rule(at: &str, value: &Value) -> Result<Operation, String> {
    let add = object(at, value, "{\"ruleName\": \"...\", \"rule\": {...}}")?;
    let rule_at = format!("{at}.rule");
    let rule = match add.get("rule") {
        None | Some(Value::Null) => {
            return Err(format!(
                "{rule_at}: missing; give the rule as {{\"endpoints\": [...], \"binaries\": [...]}}"
            ));
        }
        Some(rule) => object(
            &rule_at,
            rule,
            "{\"endpoints\": [...], \"binaries\": [...]}",
        )?,
    };
    let rule_name = optional_string(&format!("{at}.ruleName"), add.get("ruleName"))?;
    let display_name = optional_string(&format!("{rule_at}.name"), rule.get("name"))?;
    let rule_name = match (rule_name, display_name) {
        (Some(name), _) => check_rule_name(&format!("{at}.ruleName"), name)?,
        (None, Some(name)) => check_rule_name(&format!("{rule_at}.name"), name)?,
        (None, None) => {
            return Err(format!(
                "{at}.ruleName: missing; name the rule with `ruleName` (or `rule.name`), e.g. \"github_contents_write\""
            ));
        }
    };

    let endpoints_at = format!("{rule_at}.endpoints");
    let endpoints = match rule.get("endpoints") {
        None | Some(Value::Null) => {
            return Err(format!(
                "{endpoints_at}: missing; add at least one endpoint, e.g. [{{\"host\": \"api.example.com\", \"port\": 443}}]"
            ));
        }
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(format!(
                "{endpoints_at}: empty; add at least one endpoint, e.g. [{{\"host\": \"api.example.com\", \"port\": 443}}]"
            ));
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "{endpoints_at}: expected a list of endpoints, found {}",
                kind(other)
            ));
        }
    };
    let endpoints = endpoints
        .iter()
        .enumerate()
        .map(|(j, ep)| convert_endpoint(&format!("{endpoints_at}[{j}]"), ep))
        .collect::<Result<Vec<_>, _>>()?;
    let binaries = convert_binaries(&format!("{rule_at}.binaries"), rule.get("binaries"))?;

    let mut out = Map::new();
    if let Some(name) = display_name {
        out.insert("name".into(), Value::String(name.to_string()));
    }
    out.insert("endpoints".into(), Value::Array(endpoints));
    if !binaries.is_empty() {
        out.insert("binaries".into(), Value::Array(binaries));
    }
    Ok(Operation::AddRule {
        rule_name,
        rule: Value::Object(out),
    })
}

fn check_rule_name(at: &str, name: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.len() > MAX_RULE_NAME_LEN || !name.chars().all(allowed) {
        return Err(format!(
            "{at}: {name:?} is not a valid rule name; use 1-{MAX_RULE_NAME_LEN} of A-Z, a-z, 0-9, `_`, `.`, `-`, e.g. \"github_contents_write\""
        ));
    }
    if name.starts_with(PROVIDER_RULE_PREFIX) {
        return Err(format!(
            "{at}: names starting with `{PROVIDER_RULE_PREFIX}` are reserved for provider rules; choose another name"
        ));
    }
    Ok(name.to_string())
}

/// One endpoint in policy form: the proposable fields, copied.
fn convert_endpoint(at: &str, value: &Value) -> Result<Value, String> {
    let ep = object(at, value, "{\"host\": \"api.example.com\", \"port\": 443}")?;
    let mut out = Map::new();

    let host_at = format!("{at}.host");
    let host = match optional_string(&host_at, ep.get("host"))? {
        Some(host) if !host.trim().is_empty() => host,
        _ => {
            return Err(format!(
                "{host_at}: missing or empty; name the exact host, e.g. \"api.example.com\""
            ));
        }
    };
    if let Some(problem) = wildcard_host_problem(host) {
        return Err(format!("{host_at}: {problem}"));
    }
    if let Some(target) = blocked_host(host) {
        return Err(format!(
            "{host_at}: {host:?} is a {target} target, which a sandbox may never reach; propose the service's public host"
        ));
    }
    out.insert("host".into(), Value::String(host.to_string()));

    let port = optional_port(&format!("{at}.port"), ep.get("port"))?;
    let ports = match optional_list(&format!("{at}.ports"), ep.get("ports"))? {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(k, p)| port_number(&format!("{at}.ports[{k}]"), p))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    match port {
        // Port 0 is the proto3 default: fine beside `ports`, not alone.
        Some(0) if ports.is_empty() => {
            return Err(format!(
                "{at}.port: 0 is not a port; use 1-65535, e.g. \"port\": 443"
            ));
        }
        Some(0) => {}
        Some(port) => {
            out.insert("port".into(), Value::from(port));
        }
        None if ports.is_empty() => {
            return Err(format!(
                "{at}.port: missing; add \"port\": 443 (or \"ports\": [80, 443])"
            ));
        }
        None => {}
    }
    if !ports.is_empty() {
        out.insert("ports".into(), Value::from(ports));
    }

    for field in ["protocol", "tls", "enforcement", "access"] {
        if let Some(text) = optional_string(&format!("{at}.{field}"), ep.get(field))? {
            out.insert(field.into(), Value::String(text.to_string()));
        }
    }

    if let Some(list) = optional_list(&format!("{at}.rules"), ep.get("rules"))? {
        let rules = list
            .iter()
            .enumerate()
            .map(|(k, rule)| {
                let rule_at = format!("{at}.rules[{k}]");
                let rule = object(&rule_at, rule, "{\"allow\": {\"method\": \"GET\", \"path\": \"/v1/items\"}}")?;
                let allow_at = format!("{rule_at}.allow");
                match rule.get("allow") {
                    None | Some(Value::Null) => Err(format!(
                        "{allow_at}: missing; write {{\"allow\": {{\"method\": \"GET\", \"path\": \"/v1/items\"}}}}"
                    )),
                    Some(allow) => {
                        let allow = convert_method_path(&allow_at, allow)?;
                        Ok(Value::Object(Map::from_iter([("allow".to_string(), allow)])))
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("rules".into(), Value::Array(rules));
    }

    if let Some(list) = optional_list(&format!("{at}.deny_rules"), ep.get("deny_rules"))? {
        let deny = list
            .iter()
            .enumerate()
            .map(|(k, rule)| convert_method_path(&format!("{at}.deny_rules[{k}]"), rule))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("deny_rules".into(), Value::Array(deny));
    }

    if let Some(list) = optional_list(&format!("{at}.allowed_ips"), ep.get("allowed_ips"))? {
        let mut ips = Vec::with_capacity(list.len());
        for (k, entry) in list.iter().enumerate() {
            let entry_at = format!("{at}.allowed_ips[{k}]");
            let Value::String(text) = entry else {
                return Err(format!(
                    "{entry_at}: expected an address or CIDR string, found {}",
                    kind(entry)
                ));
            };
            if let Some((range, what)) = blocked_overlap(text) {
                return Err(format!(
                    "{entry_at}: {text:?} overlaps {range} ({what}), which a sandbox may never reach; list only the addresses the service needs"
                ));
            }
            ips.push(Value::String(text.clone()));
        }
        out.insert("allowed_ips".into(), Value::Array(ips));
    }

    match ep.get("allow_encoded_slash") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("allow_encoded_slash".into(), Value::Bool(true));
        }
        Some(other) => {
            return Err(format!(
                "{at}.allow_encoded_slash: expected true or false, found {}",
                kind(other)
            ));
        }
    }
    Ok(Value::Object(out))
}

/// `{"method", "path"}` of an allow or deny rule. `query` matchers are
/// not proposable and are dropped; `command` is refused.
fn convert_method_path(at: &str, value: &Value) -> Result<Value, String> {
    let rule = object(at, value, "{\"method\": \"GET\", \"path\": \"/v1/items\"}")?;
    let command_given = match rule.get("command") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if command_given {
        return Err(format!(
            "{at}.command: not supported by Portcullis REST rules (it is for SQL); remove it and use `method` and `path`"
        ));
    }
    let mut out = Map::new();
    if let Some(method) = optional_string(&format!("{at}.method"), rule.get("method"))? {
        out.insert("method".into(), Value::String(method.to_string()));
    }
    let path_at = format!("{at}.path");
    if let Some(path) = optional_string(&path_at, rule.get("path"))? {
        if let Some((before, _)) = path.split_once('?') {
            return Err(format!(
                "{path_at}: \"{before}?[redacted]\" contains a query; propose the path only ({before:?})"
            ));
        }
        out.insert("path".into(), Value::String(path.to_string()));
    }
    Ok(Value::Object(out))
}

fn convert_binaries(at: &str, value: Option<&Value>) -> Result<Vec<Value>, String> {
    let Some(list) = optional_list(at, value)? else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, bin)| {
            let bin_at = format!("{at}[{i}]");
            let bin = object(&bin_at, bin, "{\"path\": \"/usr/bin/curl\"}")?;
            match optional_string(&format!("{bin_at}.path"), bin.get("path"))? {
                Some(path) => Ok(Value::Object(Map::from_iter([(
                    "path".to_string(),
                    Value::String(path.to_string()),
                )]))),
                None => Err(format!(
                    "{bin_at}.path: missing; give the program's absolute path, e.g. \"/usr/bin/curl\""
                )),
            }
        })
        .collect()
}

/// Why a wildcard host is too broad to propose, if it is: a bare `*` or
/// `**`, or a fixed part after the last wildcard label of fewer than two
/// labels (`*.com`, `api.*.com`) or a two-label public suffix
/// (`*.co.uk`). The policy parser checks the rest of the glob syntax.
fn wildcard_host_problem(host: &str) -> Option<String> {
    if !host.contains('*') {
        return None;
    }
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    let last_wild = labels.iter().rposition(|l| l.contains('*'))?;
    let fixed = &labels[last_wild + 1..];
    let too_broad =
        fixed.len() < 2 || fixed.iter().any(|l| l.is_empty()) || is_public_suffix_pair(fixed);
    too_broad.then(|| {
        format!(
            "{host:?} is a wildcard over a whole top-level domain; propose the exact host, e.g. \"api.example.com\""
        )
    })
}

/// `co.uk`, `com.au`, `ac.jp`, ...: a generic second-level label under a
/// two-letter country TLD. A heuristic, not the public suffix list: it
/// catches the common registries without shipping the list.
fn is_public_suffix_pair(fixed: &[&str]) -> bool {
    const GENERIC_SECOND_LEVEL: [&str; 16] = [
        "ac", "co", "com", "edu", "go", "gob", "gov", "ltd", "mil", "ne", "net", "nic", "or",
        "org", "plc", "sch",
    ];
    match fixed {
        [second, tld] => {
            tld.len() == 2
                && tld.bytes().all(|b| b.is_ascii_alphabetic())
                && GENERIC_SECOND_LEVEL.contains(second)
        }
        _ => false,
    }
}

/// The kind of always-blocked target a host names, if it does: loopback,
/// link-local or cloud metadata, by name or IP literal (including the
/// legacy numeric forms `inet_aton` accepts, e.g. `2130706433`).
fn blocked_host(host: &str) -> Option<&'static str> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = lower
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&lower);
    if bare == "localhost" || bare.ends_with(".localhost") {
        return Some("loopback");
    }
    if ssrf::METADATA_HOSTNAMES.contains(&bare) {
        return Some("metadata");
    }
    let ip = bare
        .parse::<IpAddr>()
        .ok()
        .or_else(|| parse_legacy_ipv4(bare).map(IpAddr::V4))?;
    blocked_ip(ip)
}

/// Loopback, link-local, unspecified and metadata addresses, as the
/// proxy judges them.
fn blocked_ip(ip: IpAddr) -> Option<&'static str> {
    ssrf::is_always_blocked(ip).map(|kind| match kind {
        "unspecified" => "unspecified-address",
        kind => kind,
    })
}

/// The always-blocked range an `allowed_ips` entry overlaps, and its kind.
/// Entries that do not parse are left to the policy parser.
fn blocked_overlap(entry: &str) -> Option<(IpNet, &'static str)> {
    let entry = entry.trim();
    let net = entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))?;
    ssrf::always_blocked_overlap(&net)
}

/// The IPv4 forms `inet_aton` accepts beyond dotted quads: one to four
/// parts, each decimal, octal (`0` prefix) or hex (`0x` prefix), the last
/// part filling the remaining bytes (`127.1`, `0x7f000001`).
fn parse_legacy_ipv4(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() && radix != 8 {
            return None;
        }
        if !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        let value = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        numbers.push(value);
    }
    let (last, leading) = numbers.split_last()?;
    let mut addr: u32 = 0;
    for (i, byte) in leading.iter().enumerate() {
        if *byte > 255 {
            return None;
        }
        addr |= byte << (24 - 8 * i);
    }
    let last_bits = 32 - 8 * leading.len();
    if last_bits < 32 && u64::from(*last) >= 1u64 << last_bits {
        return None;
    }
    Some(Ipv4Addr::from(addr | last))
}

/// A port given as `port`: `None` when absent or null; `Some(0)` is the
/// proto3 default and is judged by the caller.
fn optional_port(at: &str, value: Option<&Value>) -> Result<Option<u16>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(0)),
        Some(v) => port_number(at, v).map(Some),
    }
}

/// A port number in 1..=65535.
fn port_number(at: &str, value: &Value) -> Result<u16, String> {
    match value {
        Value::Number(n) => match n.as_u64().map(u16::try_from) {
            Some(Ok(port)) if port != 0 => Ok(port),
            _ => Err(format!("{at}: {n} is not a port; use 1-65535")),
        },
        other => Err(format!(
            "{at}: expected a port number, found {}",
            kind(other)
        )),
    }
}

fn object<'a>(at: &str, value: &'a Value, example: &str) -> Result<&'a Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "{at}: expected an object such as {example}, found {}",
            kind(other)
        )),
    }
}

/// A string field; `None` when absent, null or empty.
fn optional_string<'a>(at: &str, value: Option<&'a Value>) -> Result<Option<&'a str>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{at}: expected a string, found {}", kind(other))),
    }
}

/// A list field; `None` when absent, null or empty.
fn optional_list<'a>(at: &str, value: Option<&'a Value>) -> Result<Option<&'a Vec<Value>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) if list.is_empty() => Ok(None),
        Some(Value::Array(list)) => Ok(Some(list)),
        Some(other) => Err(format!("{at}: expected a list, found {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The skill's worked example: a GitHub contents PUT for `/usr/bin/gh`.
    fn github_example() -> Value {
        json!({
            "intent_summary": "Update README.md in acme/widgets with the generated changelog; GitHub contents API, one file.",
            "operations": [{
                "addRule": {
                    "ruleName": "github_contents_write",
                    "rule": {
                        "name": "github_contents_write",
                        "endpoints": [{
                            "host": "api.github.com",
                            "port": 443,
                            "protocol": "rest",
                            "enforcement": "enforce",
                            "rules": [
                                {"allow": {"method": "PUT", "path": "/repos/acme/widgets/contents/README.md"}}
                            ]
                        }],
                        "binaries": [{"path": "/usr/bin/gh"}]
                    }
                }
            }]
        })
    }

    fn parse_value(v: &Value) -> Result<Proposal, String> {
        parse(v.to_string().as_bytes())
    }

    /// A one-operation proposal around `endpoint`.
    fn with_endpoint(endpoint: Value) -> Value {
        json!({"operations": [{"addRule": {"ruleName": "r", "rule": {"endpoints": [endpoint]}}}]})
    }

    /// The error for `v`, which must be rejected.
    fn err(v: &Value) -> String {
        match parse_value(v) {
            Err(e) => e,
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    fn only_rule(p: &Proposal) -> (&str, &Value) {
        match p.operations.as_slice() {
            [Operation::AddRule { rule_name, rule }] => (rule_name, rule),
            other => panic!("expected one addRule, got {other:?}"),
        }
    }

    const EP0: &str = "operations[0].addRule.rule.endpoints[0]";

    #[test]
    fn the_reference_example_converts_exactly() {
        let p = parse_value(&github_example()).unwrap();
        assert_eq!(
            p.intent_summary,
            "Update README.md in acme/widgets with the generated changelog; GitHub contents API, one file."
        );
        let (name, rule) = only_rule(&p);
        assert_eq!(name, "github_contents_write");
        assert_eq!(
            *rule,
            json!({
                "name": "github_contents_write",
                "endpoints": [{
                    "host": "api.github.com",
                    "port": 443,
                    "protocol": "rest",
                    "enforcement": "enforce",
                    "rules": [{"allow": {"method": "PUT", "path": "/repos/acme/widgets/contents/README.md"}}]
                }],
                "binaries": [{"path": "/usr/bin/gh"}]
            })
        );
    }

    #[test]
    fn every_proposable_field_is_copied_and_nothing_else() {
        let v = json!({
            "operations": [{"addRule": {"ruleName": "internal_api", "rule": {
                "endpoints": [{
                    "host": "Internal.Example.com",
                    "port": 8443,
                    "ports": [8443, 9443],
                    "protocol": "rest",
                    "tls": "skip",
                    "enforcement": "audit",
                    "access": "read-only",
                    "rules": [{"allow": {"method": "GET", "path": "/v1/**", "query": {"a": "b"}}}],
                    "deny_rules": [{"method": "DELETE", "path": "/v1/admin/**", "query": {"x": "*"}}],
                    "allowed_ips": ["10.0.0.0/24", "10.1.2.3"],
                    "allow_encoded_slash": true,
                    "path": "/v1/**",
                    "credential_binding": {"provider": "p"},
                    "request_body_credential_rewrite": true,
                    "advisor_proposed": true
                }],
                "binaries": [{"path": "/usr/bin/curl", "harness": true}]
            }}}]
        });
        let p = parse_value(&v).unwrap();
        let (name, rule) = only_rule(&p);
        assert_eq!(name, "internal_api");
        assert_eq!(
            *rule,
            json!({
                "endpoints": [{
                    "host": "Internal.Example.com",
                    "port": 8443,
                    "ports": [8443, 9443],
                    "protocol": "rest",
                    "tls": "skip",
                    "enforcement": "audit",
                    "access": "read-only",
                    "rules": [{"allow": {"method": "GET", "path": "/v1/**"}}],
                    "deny_rules": [{"method": "DELETE", "path": "/v1/admin/**"}],
                    "allowed_ips": ["10.0.0.0/24", "10.1.2.3"],
                    "allow_encoded_slash": true
                }],
                "binaries": [{"path": "/usr/bin/curl"}]
            })
        );
        assert_eq!(p.intent_summary, "");
    }

    #[test]
    fn proto3_defaults_mean_not_given() {
        let v = json!({
            "intent_summary": null,
            "operations": [{"addRule": {"ruleName": "r", "rule": {
                "name": "",
                "endpoints": [{
                    "host": "api.example.com", "port": 0, "ports": [443],
                    "protocol": "", "tls": "", "enforcement": "", "access": "",
                    "rules": [], "deny_rules": [], "allowed_ips": [],
                    "allow_encoded_slash": false
                }],
                "binaries": []
            }}}]
        });
        let p = parse_value(&v).unwrap();
        let (_, rule) = only_rule(&p);
        assert_eq!(
            *rule,
            json!({"endpoints": [{"host": "api.example.com", "ports": [443]}]})
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = github_example();
        v["extra"] = json!({"anything": [1, 2]});
        v["operations"][0]["note"] = json!("x");
        v["operations"][0]["addRule"]["confidence"] = json!(0.9);
        v["operations"][0]["addRule"]["rule"]["comment"] = json!("y");
        let plain = parse_value(&github_example()).unwrap();
        assert_eq!(parse_value(&v).unwrap(), plain);
    }

    #[test]
    fn rule_name_prefers_rule_name_over_rule_dot_name() {
        let mut v = github_example();
        v["operations"][0]["addRule"]["ruleName"] = json!("key_name");
        v["operations"][0]["addRule"]["rule"]["name"] = json!("Display.Name");
        let p = parse_value(&v).unwrap();
        let (name, rule) = only_rule(&p);
        assert_eq!(name, "key_name");
        assert_eq!(rule["name"], "Display.Name");

        // Without ruleName, rule.name is the key.
        let obj = v["operations"][0]["addRule"].as_object_mut().unwrap();
        obj.remove("ruleName");
        let p = parse_value(&v).unwrap();
        assert_eq!(only_rule(&p).0, "Display.Name");

        // An empty ruleName (proto3 default) falls back too.
        v["operations"][0]["addRule"]["ruleName"] = json!("");
        assert_eq!(only_rule(&parse_value(&v).unwrap()).0, "Display.Name");
    }

    #[test]
    fn missing_rule_name_is_rejected() {
        let mut v = github_example();
        let add = v["operations"][0]["addRule"].as_object_mut().unwrap();
        add.remove("ruleName");
        add["rule"].as_object_mut().unwrap().remove("name");
        let e = err(&v);
        assert!(
            e.starts_with("operations[0].addRule.ruleName: missing;"),
            "{e}"
        );
    }

    #[test]
    fn bad_rule_names_are_rejected_with_their_field() {
        let mut v = github_example();
        v["operations"][0]["addRule"]["ruleName"] = json!("has space");
        let e = err(&v);
        assert!(
            e.starts_with("operations[0].addRule.ruleName: \"has space\" is not a valid rule name"),
            "{e}"
        );
        v["operations"][0]["addRule"]["ruleName"] = json!("x".repeat(129));
        assert!(err(&v).contains("use 1-128 of A-Z"));
        v["operations"][0]["addRule"]["ruleName"] = json!("x".repeat(128));
        assert!(parse_value(&v).is_ok());
        v["operations"][0]["addRule"]["ruleName"] = json!("_provider_github");
        let e = err(&v);
        assert!(
            e.starts_with(
                "operations[0].addRule.ruleName: names starting with `_provider_` are reserved"
            ),
            "{e}"
        );
        // The same checks apply to rule.name when it is the key.
        v["operations"][0]["addRule"]
            .as_object_mut()
            .unwrap()
            .remove("ruleName");
        v["operations"][0]["addRule"]["rule"]["name"] = json!("_provider_x");
        let e = err(&v);
        assert!(
            e.starts_with("operations[0].addRule.rule.name: names starting with `_provider_`"),
            "{e}"
        );
        v["operations"][0]["addRule"]["rule"]["name"] = json!("ünïcode");
        assert!(err(&v).starts_with("operations[0].addRule.rule.name: \"ünïcode\" is not"));
        v["operations"][0]["addRule"]["rule"]["name"] = json!(5);
        assert_eq!(
            err(&v),
            "operations[0].addRule.rule.name: expected a string, found a number"
        );
    }

    #[test]
    fn body_must_be_utf8_json_object() {
        let e = parse(b"{\"operations\": \xff}").unwrap_err();
        assert_eq!(
            e,
            "body: not UTF-8 (invalid byte at offset 15); send the proposal as UTF-8 JSON"
        );
        let e = parse(b"{\n  \"operations\": [\n}").unwrap_err();
        assert!(e.starts_with("body: not valid JSON: "), "{e}");
        assert!(e.contains("line 3 column 1"), "{e}");
        let e = parse(b"").unwrap_err();
        assert!(e.contains("line 1 column 0"), "{e}");
        let e = parse(b"[1]").unwrap_err();
        assert!(
            e.starts_with("body: expected a JSON object, found a list"),
            "{e}"
        );
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse(&big)
                .unwrap_err()
                .contains("over the 65536-byte limit")
        );
    }

    #[test]
    fn operations_must_be_present_and_non_empty() {
        assert!(err(&json!({})).starts_with("operations: missing;"));
        assert!(err(&json!({"operations": null})).starts_with("operations: missing;"));
        assert!(err(&json!({"operations": []})).starts_with("operations: empty;"));
        assert_eq!(
            err(&json!({"operations": {"addRule": {}}})),
            "operations: expected a list of operations, found an object"
        );
        assert!(
            err(&json!({"operations": ["addRule"]}))
                .starts_with("operations[0]: expected an object")
        );
    }

    #[test]
    fn only_add_rule_operations_are_accepted() {
        let mut v = github_example();
        let ops = v["operations"].as_array_mut().unwrap();
        ops.push(json!({"removeRule": {"ruleName": "x"}}));
        let e = err(&v);
        assert!(
            e.starts_with("operations[1]: only addRule operations are accepted"),
            "{e}"
        );

        let v = json!({"operations": [{"requestProvider": {"providerName": "github", "providerType": "github"}}]});
        assert_eq!(
            parse(v.to_string().as_bytes()).unwrap().operations,
            [Operation::RequestProvider {
                provider_name: "github".into(),
                provider_type: "github".into()
            }]
        );
        let v = json!({"operations": [{"requestProvider": {}}]});
        assert!(
            err(&v).starts_with("operations[0].requestProvider.providerName: missing"),
            "{}",
            err(&v)
        );
        let v = json!({"operations": [{"requestProvider": {"providerName": "../x"}}]});
        assert!(err(&v).contains("is not a provider name"), "{}", err(&v));
        let v = json!({"operations": [{"add_rule": {"ruleName": "x"}}]});
        assert!(err(&v).contains("write the key as `addRule` (camelCase)"));
        let v = json!({"operations": [{"addRule": {"ruleName": "r", "rule": {"endpoints": [{"host": "a.example.com", "port": 1}]}}, "requestProvider": {}}]});
        assert!(err(&v).starts_with("operations[0]: names more than one operation"));
    }

    #[test]
    fn rule_and_endpoints_are_required() {
        let v = json!({"operations": [{"addRule": {"ruleName": "r"}}]});
        assert!(err(&v).starts_with("operations[0].addRule.rule: missing;"));
        let v = json!({"operations": [{"addRule": {"ruleName": "r", "rule": {}}}]});
        assert!(err(&v).starts_with("operations[0].addRule.rule.endpoints: missing;"));
        let v = json!({"operations": [{"addRule": {"ruleName": "r", "rule": {"endpoints": []}}}]});
        assert!(err(&v).starts_with("operations[0].addRule.rule.endpoints: empty;"));
        let v = json!({"operations": [{"addRule": {"ruleName": "r", "rule": {"endpoints": "a"}}}]});
        assert!(err(&v).starts_with("operations[0].addRule.rule.endpoints: expected a list"));
    }

    #[test]
    fn host_must_be_given() {
        for ep in [
            json!({"port": 443}),
            json!({"host": "", "port": 443}),
            json!({"host": "  ", "port": 443}),
        ] {
            let e = err(&with_endpoint(ep));
            assert!(
                e.starts_with(&format!("{EP0}.host: missing or empty;")),
                "{e}"
            );
        }
        let e = err(&with_endpoint(json!({"host": 1, "port": 443})));
        assert_eq!(e, format!("{EP0}.host: expected a string, found a number"));
    }

    #[test]
    fn ports_are_required_and_in_range() {
        let e = err(&with_endpoint(json!({"host": "a.example.com"})));
        assert!(e.starts_with(&format!("{EP0}.port: missing;")), "{e}");
        let e = err(&with_endpoint(json!({"host": "a.example.com", "port": 0})));
        assert!(
            e.starts_with(&format!("{EP0}.port: 0 is not a port")),
            "{e}"
        );
        let e = err(&with_endpoint(
            json!({"host": "a.example.com", "port": 65536}),
        ));
        assert!(
            e.starts_with(&format!("{EP0}.port: 65536 is not a port; use 1-65535")),
            "{e}"
        );
        let e = err(&with_endpoint(json!({"host": "a.example.com", "port": -1})));
        assert!(
            e.starts_with(&format!("{EP0}.port: -1 is not a port")),
            "{e}"
        );
        let e = err(&with_endpoint(
            json!({"host": "a.example.com", "port": 44.5}),
        ));
        assert!(
            e.starts_with(&format!("{EP0}.port: 44.5 is not a port")),
            "{e}"
        );
        let e = err(&with_endpoint(
            json!({"host": "a.example.com", "port": "443"}),
        ));
        assert_eq!(
            e,
            format!("{EP0}.port: expected a port number, found a string")
        );
        let e = err(&with_endpoint(
            json!({"host": "a.example.com", "ports": [443, 0]}),
        ));
        assert!(
            e.starts_with(&format!("{EP0}.ports[1]: 0 is not a port")),
            "{e}"
        );
        let e = err(&with_endpoint(
            json!({"host": "a.example.com", "ports": []}),
        ));
        assert!(e.starts_with(&format!("{EP0}.port: missing;")), "{e}");
        let p = parse_value(&with_endpoint(
            json!({"host": "a.example.com", "port": 65535}),
        ))
        .unwrap();
        assert_eq!(only_rule(&p).1["endpoints"][0]["port"], 65535);
    }

    #[test]
    fn paths_with_queries_are_rejected_without_echoing_the_query() {
        let ep = json!({"host": "a.example.com", "port": 443, "protocol": "rest",
            "rules": [{"allow": {"method": "GET", "path": "/ok"}}, {"allow": {"method": "GET", "path": "/x?token=1"}}]});
        let e = err(&with_endpoint(ep));
        assert_eq!(
            e,
            format!(
                "{EP0}.rules[1].allow.path: \"/x?[redacted]\" contains a query; propose the path only (\"/x\")"
            )
        );
        assert!(!e.contains("token"));
        let ep = json!({"host": "a.example.com", "port": 443, "protocol": "rest", "access": "read-only",
            "deny_rules": [{"method": "GET", "path": "/admin?"}]});
        let e = err(&with_endpoint(ep));
        assert!(
            e.starts_with(&format!(
                "{EP0}.deny_rules[0].path: \"/admin?[redacted]\" contains a query"
            )),
            "{e}"
        );
    }

    #[test]
    fn command_fields_are_refused() {
        let ep = json!({"host": "db.example.com", "port": 5432,
            "rules": [{"allow": {"method": "GET", "path": "/", "command": "SELECT"}}]});
        let e = err(&with_endpoint(ep));
        assert!(
            e.starts_with(&format!(
                "{EP0}.rules[0].allow.command: not supported by Portcullis REST rules"
            )),
            "{e}"
        );
        let ep = json!({"host": "db.example.com", "port": 5432, "access": "read-only",
            "deny_rules": [{"method": "GET", "path": "/", "command": "DROP"}]});
        assert!(
            err(&with_endpoint(ep))
                .starts_with(&format!("{EP0}.deny_rules[0].command: not supported"))
        );
        // The proto3 default (empty) is no command.
        let ep = json!({"host": "a.example.com", "port": 443,
            "rules": [{"allow": {"method": "GET", "path": "/", "command": ""}}]});
        assert!(parse_value(&with_endpoint(ep)).is_ok());
    }

    #[test]
    fn allow_entries_need_the_allow_wrapper() {
        let ep = json!({"host": "a.example.com", "port": 443, "rules": [{"method": "GET", "path": "/"}]});
        let e = err(&with_endpoint(ep));
        assert!(
            e.starts_with(&format!("{EP0}.rules[0].allow: missing;")),
            "{e}"
        );
    }

    #[test]
    fn wildcard_tld_hosts_are_rejected() {
        for host in [
            "*",
            "**",
            "*.com",
            "**.com",
            "*.co.uk",
            "*.com.au",
            "api.*.com",
            "*.",
            "*.com.",
        ] {
            let e = err(&with_endpoint(json!({"host": host, "port": 443})));
            assert!(
                e.starts_with(&format!(
                    "{EP0}.host: {host:?} is a wildcard over a whole top-level domain"
                )),
                "{host}: {e}"
            );
        }
        for host in [
            "*.example.com",
            "**.example.com",
            "*.s3.*.amazonaws.com",
            "api-*.example.co.uk",
            "*.github.io",
        ] {
            assert!(
                parse_value(&with_endpoint(json!({"host": host, "port": 443}))).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn link_local_metadata_and_loopback_hosts_are_rejected() {
        let cases = [
            ("169.254.169.254", "metadata"),
            ("169.254.10.1", "link-local"),
            ("metadata.google.internal", "metadata"),
            ("METADATA.google.internal.", "metadata"),
            ("fe80::1", "link-local"),
            ("[fe80::1]", "link-local"),
            ("fd00:ec2::254", "metadata"),
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("localhost", "loopback"),
            ("api.localhost", "loopback"),
            ("0.0.0.0", "unspecified-address"),
            ("2130706433", "loopback"),
            ("0x7f.1", "loopback"),
            ("0251.0376.0251.0376", "metadata"),
            ("100.100.100.200", "metadata"),
        ];
        for (host, what) in cases {
            let e = err(&with_endpoint(json!({"host": host, "port": 80})));
            assert_eq!(
                e,
                format!(
                    "{EP0}.host: {host:?} is a {what} target, which a sandbox may never reach; propose the service's public host"
                ),
                "{host}"
            );
        }
        for host in [
            "10.0.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "metadata.example.com",
            "localhost.example.com",
            "1.2.3.4.5",
        ] {
            assert!(
                parse_value(&with_endpoint(json!({"host": host, "port": 80}))).is_ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn blocked_ranges_in_allowed_ips_are_rejected() {
        for (entry, range) in [
            ("169.254.169.254", "169.254.0.0/16"),
            ("169.254.0.0/16", "169.254.0.0/16"),
            ("169.0.0.0/8", "169.254.0.0/16"),
            ("0.0.0.0/0", "127.0.0.0/8"),
            ("127.0.0.1/32", "127.0.0.0/8"),
            ("fe80::/64", "fe80::/10"),
            ("::1", "::1/128"),
            ("::/0", "::1/128"),
            ("::ffff:169.254.1.1", "::ffff:169.254.0.0/112"),
            ("100.64.0.0/10", "100.100.100.200/32"),
        ] {
            let ep = json!({"host": "svc.internal.example", "port": 443, "allowed_ips": ["10.0.0.0/8", entry]});
            let e = err(&with_endpoint(ep));
            assert!(
                e.starts_with(&format!(
                    "{EP0}.allowed_ips[1]: {entry:?} overlaps {range} ("
                )),
                "{entry}: {e}"
            );
        }
        let ep = json!({"host": "svc.internal.example", "port": 443, "allowed_ips": [5]});
        assert!(err(&with_endpoint(ep)).starts_with(&format!(
            "{EP0}.allowed_ips[0]: expected an address or CIDR string"
        )));
        // Unparsable entries are left to the policy parser.
        let ep = json!({"host": "svc.internal.example", "port": 443, "allowed_ips": ["not-an-ip"]});
        assert!(parse_value(&with_endpoint(ep)).is_ok());
    }

    #[test]
    fn intent_summary_is_bounded_in_characters() {
        let mut v = github_example();
        v["intent_summary"] = json!("é".repeat(MAX_INTENT_SUMMARY_CHARS));
        assert!(parse_value(&v).is_ok());
        v["intent_summary"] = json!("é".repeat(MAX_INTENT_SUMMARY_CHARS + 1));
        assert_eq!(
            err(&v),
            "intent_summary: 2001 characters is too long; keep it to 2000 or fewer"
        );
        v["intent_summary"] = json!(["x"]);
        assert_eq!(err(&v), "intent_summary: expected a string, found a list");
    }

    #[test]
    fn binaries_need_paths() {
        let mut v = github_example();
        v["operations"][0]["addRule"]["rule"]["binaries"] = json!(["/usr/bin/gh"]);
        assert!(err(&v).starts_with("operations[0].addRule.rule.binaries[0]: expected an object"));
        v["operations"][0]["addRule"]["rule"]["binaries"] = json!([{"path": ""}]);
        assert!(err(&v).starts_with("operations[0].addRule.rule.binaries[0].path: missing;"));
        // No binaries: the key is left out (any binary; the reviewer sees it).
        v["operations"][0]["addRule"]["rule"]
            .as_object_mut()
            .unwrap()
            .remove("binaries");
        let p = parse_value(&v).unwrap();
        assert!(only_rule(&p).1.get("binaries").is_none());
    }

    #[test]
    fn type_errors_name_the_field() {
        let ep = json!({"host": "a.example.com", "port": 443, "protocol": 7});
        assert_eq!(
            err(&with_endpoint(ep)),
            format!("{EP0}.protocol: expected a string, found a number")
        );
        let ep = json!({"host": "a.example.com", "port": 443, "allow_encoded_slash": "yes"});
        assert_eq!(
            err(&with_endpoint(ep)),
            format!("{EP0}.allow_encoded_slash: expected true or false, found a string")
        );
        let ep = json!({"host": "a.example.com", "port": 443, "rules": {"allow": {}}});
        assert_eq!(
            err(&with_endpoint(ep)),
            format!("{EP0}.rules: expected a list, found an object")
        );
        let v = json!({"operations": [{"addRule": "x"}]});
        assert!(err(&v).starts_with("operations[0].addRule: expected an object"));
    }

    #[test]
    fn several_operations_keep_their_order_and_index_errors() {
        let mut v = github_example();
        let second = json!({"addRule": {"ruleName": "pypi", "rule": {"endpoints": [{"host": "pypi.org", "port": 443}]}}});
        let third = json!({"addRule": {"ruleName": "bad", "rule": {"endpoints": [{"host": "pypi.org", "port": 443}, {"host": "*.org", "port": 443}]}}});
        v["operations"].as_array_mut().unwrap().push(second.clone());
        let p = parse_value(&v).unwrap();
        let names: Vec<&str> = p
            .operations
            .iter()
            .filter_map(|op| match op {
                Operation::AddRule { rule_name, .. } => Some(rule_name.as_str()),
                Operation::RequestProvider { .. } => None,
            })
            .collect();
        assert_eq!(names, ["github_contents_write", "pypi"]);
        v["operations"].as_array_mut().unwrap().push(third);
        assert!(err(&v).starts_with("operations[2].addRule.rule.endpoints[1].host:"));
    }

    #[test]
    fn legacy_ipv4_forms() {
        assert_eq!(
            parse_legacy_ipv4("127.1"),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            parse_legacy_ipv4("0x7f000001"),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            parse_legacy_ipv4("10.0.258"),
            Some(Ipv4Addr::new(10, 0, 1, 2))
        );
        assert_eq!(parse_legacy_ipv4("0"), Some(Ipv4Addr::new(0, 0, 0, 0)));
        for bad in [
            "",
            ".",
            "1..2",
            "256.1",
            "1.2.3.256",
            "1.2.65536",
            "09",
            "0x",
            "a",
            "1.2.3.4.5",
            "4294967296",
        ] {
            assert_eq!(parse_legacy_ipv4(bad), None, "{bad}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples: [&[u8]; 8] = [
            b"null",
            b"{\"operations\":[null]}",
            b"{\"operations\":[{\"addRule\":null}]}",
            b"{\"operations\":[{\"addRule\":{\"rule\":{\"endpoints\":[null]}}}]}",
            b"{\"operations\":[{\"addRule\":{\"ruleName\":\"r\",\"rule\":{\"endpoints\":[{\"host\":\"\xc3\xa9?\",\"port\":1e3}]}}}]}",
            b"\"str\"",
            b"{\"operations\":[{\"addRule\":{\"ruleName\":\"r\",\"rule\":{\"endpoints\":[{\"host\":\"h.example.com\",\"port\":18446744073709551616}]}}}]}",
            &[b'['; 10_000],
        ];
        for body in samples {
            let _ = parse(body);
        }
    }
}
