//! The policy document (reference §1.1–1.3, §1.7; contract §1), walked by
//! hand so the first error names its YAML path and the fix.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_yaml::Value;

use super::l7::{self, AccessPreset, L7Config};
use super::yaml::{Ctx, Res, join, kind, to_json};
use super::{EndpointSummary, glob, ssrf};

/// The last four are accepted but not enforced (contract §3).
const TOP_KEYS: &[&str] = &[
    "version",
    "network_policies",
    "filesystem_policy",
    "landlock",
    "process",
    "network_middlewares",
];

const RULE_KEYS: &[&str] = &["name", "endpoints", "binaries"];

const ENDPOINT_KEYS: &[&str] = &[
    "host",
    "port",
    "ports",
    "path",
    "protocol",
    "tls",
    "enforcement",
    "access",
    "rules",
    "deny_rules",
    "allowed_ips",
    "allow_encoded_slash",
    "websocket_credential_rewrite",
    "request_body_credential_rewrite",
    "allow_uninspected_credentials",
];

/// OpenShell endpoint keys for features Portcullis does not have yet: a
/// precise message beats "unknown key".
const ENDPOINT_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "credential_signing",
        "`credential_signing` (SigV4 re-signing) is not supported by Portcullis yet",
    ),
    (
        "signing_service",
        "`signing_service` (SigV4 re-signing) is not supported by Portcullis yet",
    ),
    (
        "signing_region",
        "`signing_region` (SigV4 re-signing) is not supported by Portcullis yet",
    ),
    (
        "credential_binding",
        "`credential_binding` is not supported by Portcullis yet; attach the provider to the sandbox instead",
    ),
    (
        "persisted_queries",
        "`persisted_queries` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "graphql_persisted_queries",
        "`graphql_persisted_queries` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "graphql_max_body_bytes",
        "`graphql_max_body_bytes` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "json_rpc",
        "`json_rpc` is for the JSON-RPC protocol, which Portcullis does not support yet",
    ),
    (
        "mcp",
        "`mcp` is for the MCP protocol, which Portcullis does not support yet",
    ),
];

/// Prefix of rules composed from providers; user policy may not use it.
pub const PROVIDER_RULE_PREFIX: &str = "_provider_";

/// Allowlists broader than this prefix load with a warning (OpenShell's
/// `MIN_SAFE_PREFIX_LEN`).
const MIN_SAFE_PREFIX_LEN: u8 = 16;

/// One `network_policies` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The map key: the rule id in logs, deny reasons and deny bodies.
    pub key: String,
    /// Display name; the key when not given.
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Binary paths or globs as written; empty means any binary.
    pub binaries: Vec<String>,
}

/// One endpoint of a rule, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub summary: EndpointSummary,
    /// The `path` scope selecting between L7 endpoints on one host:port.
    pub path: Option<String>,
    /// `tls` as written: "", `skip`, or a deprecated value that acts as "".
    pub tls: String,
    /// Present iff the protocol is `rest` or `websocket`.
    pub l7: Option<L7Config>,
    pub allow_encoded_slash: bool,
    pub websocket_credential_rewrite: bool,
    pub request_body_credential_rewrite: bool,
}

/// Who wrote the document, which decides whether `_provider_` rule keys
/// are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A user, proposal or file: [`PROVIDER_RULE_PREFIX`] is refused, so no
    /// one can forge or shadow a provider rule.
    User,
    /// The agent's own composition of a validated user policy and
    /// provider profiles: `_provider_` keys are the point.
    Composed,
}

/// A parsed document: rules sorted by key, plus the unenforced sections.
pub(crate) struct Document {
    pub rules: Vec<Rule>,
    pub sections: BTreeMap<String, serde_json::Value>,
}

pub(crate) fn parse_document(ctx: &mut Ctx<'_>, yaml: &str, origin: Origin) -> Res<Document> {
    let mut root: Value = serde_yaml::from_str(yaml).map_err(|e| syntax_error(ctx, &e))?;
    root.apply_merge().map_err(|e| {
        ctx.err(
            "document",
            format!("cannot apply a YAML merge key (`<<`): {e}"),
        )
    })?;
    let Some(top) = ctx.map(&root, "document")? else {
        return Err(ctx.err(
            "document",
            "the policy is empty; start it with `version: 1` and `network_policies:`",
        ));
    };
    let mut version_seen = false;
    let mut rules = Vec::new();
    let mut sections = BTreeMap::new();
    for (key, value) in ctx.fields(top, "", TOP_KEYS, &[])? {
        match key {
            "version" => {
                check_version(ctx, value)?;
                version_seen = true;
            }
            "network_policies" => rules = parse_rules(ctx, value, origin)?,
            section => {
                ctx.warnings.push(format!(
                    "`{section}` is parsed but not enforced by Portcullis"
                ));
                sections.insert(section.to_string(), to_json(value));
            }
        }
    }
    if !version_seen {
        return Err(ctx.err("version", "missing; add `version: 1` at the top"));
    }
    rules.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Document { rules, sections })
}

fn syntax_error(ctx: &Ctx<'_>, e: &serde_yaml::Error) -> super::PolicyError {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            // serde_yaml appends the location to some messages; it is in
            // the path already.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let msg = text.replacen(&suffix, "", 1);
            // serde_yaml points duplicate keys at the start of their mapping.
            // It may prefix its own path: `a.b: duplicate entry with key "x"`.
            const DUP: &str = "duplicate entry with key ";
            let problem = match msg.find(DUP) {
                Some(i) => {
                    let key = &msg[i + DUP.len()..];
                    let within = msg[..i].trim_end_matches([':', ' ']);
                    let within = if within.is_empty() {
                        "the mapping that starts here".to_string()
                    } else {
                        format!("`{within}` (the mapping that starts here)")
                    };
                    format!(
                        "duplicate key {key} in {within}; each key may appear once, so merge or remove the repeats"
                    )
                }
                None => format!("invalid YAML: {msg}; fix the syntax at that position"),
            };
            ctx.err(
                &format!("line {}, column {}", loc.line(), loc.column()),
                problem,
            )
        }
        None if text.contains("more than one document") => ctx.err(
            "document",
            "a policy is a single YAML document; remove the extra `---` separators",
        ),
        None => ctx.err("document", format!("invalid YAML: {text}")),
    }
}

fn check_version(ctx: &Ctx<'_>, v: &Value) -> Res<()> {
    match v {
        Value::Number(n) if n.as_u64() == Some(1) => Ok(()),
        Value::Number(n) => Err(ctx.err(
            "version",
            format!("version {n} is not supported; set `version: 1`"),
        )),
        other => Err(ctx.err(
            "version",
            format!(
                "expected the number 1, found {}; set `version: 1`",
                kind(other)
            ),
        )),
    }
}

fn parse_rules(ctx: &mut Ctx<'_>, v: &Value, origin: Origin) -> Res<Vec<Rule>> {
    let path = "network_policies";
    let Some(map) = ctx.map(v, path)? else {
        return Ok(Vec::new());
    };
    let mut rules = Vec::with_capacity(map.len());
    for (k, value) in map {
        let Value::String(key) = k else {
            return Err(ctx.err(
                path,
                format!(
                    "rule key {} is {}; rule keys must be strings",
                    super::yaml::scalar_text(k),
                    kind(k)
                ),
            ));
        };
        rules.push(parse_rule(ctx, key, value, origin)?);
    }
    Ok(rules)
}

fn parse_rule(ctx: &mut Ctx<'_>, key: &str, v: &Value, origin: Origin) -> Res<Rule> {
    let base = join("network_policies", key);
    if key.is_empty() {
        return Err(ctx.err(
            "network_policies",
            "a rule has an empty key; name it, e.g. `github_api:`",
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ctx.err(
            &base,
            "the rule key contains control characters; rename the rule",
        ));
    }
    if origin == Origin::User && key.starts_with(PROVIDER_RULE_PREFIX) {
        return Err(ctx.err(
            &base,
            format!(
                "the `{PROVIDER_RULE_PREFIX}` prefix is reserved for rules composed from providers; rename the rule"
            ),
        ));
    }
    let Some(map) = ctx.map(v, &base)? else {
        return Err(ctx.err(
            &base,
            "the rule is empty; give it `endpoints:` (and usually `binaries:`)",
        ));
    };
    let mut name = None;
    let mut endpoints = None;
    let mut binaries = Vec::new();
    for (field, value) in ctx.fields(map, &base, RULE_KEYS, &[])? {
        let at = join(&base, field);
        match field {
            "name" => name = ctx.str(value, &at, "name: github-api")?.map(str::to_string),
            "endpoints" => {
                let list = ctx
                    .seq(
                        value,
                        &at,
                        "endpoints: [{host: api.example.com, port: 443}]",
                    )?
                    .unwrap_or_default();
                let mut parsed = Vec::with_capacity(list.len());
                for (i, ep) in list.iter().enumerate() {
                    parsed.push(parse_endpoint(ctx, ep, &format!("{at}[{i}]"))?);
                }
                endpoints = Some(parsed);
            }
            _ => binaries = parse_binaries(ctx, value, &at)?,
        }
    }
    let mut endpoints = endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(ctx.err(
            &join(&base, "endpoints"),
            "a rule needs at least one endpoint, e.g. `endpoints: [{host: api.example.com, port: 443}]`",
        ));
    }
    // §2.5 item 4: an exact host with a user-declared binary may reach
    // private addresses.
    for ep in &mut endpoints {
        let s = &mut ep.summary;
        s.exact_declared_host =
            !s.host_pattern.is_empty() && !s.host_pattern.contains('*') && !binaries.is_empty();
    }
    Ok(Rule {
        key: key.to_string(),
        name: name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| key.to_string()),
        endpoints,
        binaries,
    })
}

fn parse_binaries(ctx: &mut Ctx<'_>, v: &Value, path: &str) -> Res<Vec<String>> {
    let list = ctx
        .seq(v, path, "binaries: [{path: /usr/bin/curl}]")?
        .unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let map = match item {
            Value::Mapping(m) => m,
            Value::String(s) => {
                return Err(ctx.err(&at, format!("write binaries as `- path: {s}`")));
            }
            other => {
                return Err(ctx.err(
                    &at,
                    format!("expected `- path: /usr/bin/...`, found {}", kind(other)),
                ));
            }
        };
        let mut bin = None;
        for (field, value) in ctx.fields(map, &at, &["path", "harness"], &[])? {
            let field_at = join(&at, field);
            if field == "path" {
                bin = ctx.str(value, &field_at, "path: /usr/bin/curl")?;
            } else {
                ctx.bool(value, &field_at, "harness")?;
                ctx.warn(&field_at, "`harness` is deprecated and ignored; remove it");
            }
        }
        let at = join(&at, "path");
        let Some(bin) = bin else {
            return Err(ctx.err(
                &at,
                "missing; give the executable, e.g. `path: /usr/bin/curl`",
            ));
        };
        if let Some(problem) = binary_path_error(bin) {
            return Err(ctx.err(&at, problem));
        }
        out.push(bin.to_string());
    }
    Ok(out)
}

/// Why a binary path or glob cannot be loaded, if it cannot.
pub fn binary_path_error(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("empty path; give the executable, e.g. `/usr/bin/curl`".into());
    }
    if p.chars().any(char::is_control) {
        return Some("the path contains control characters".into());
    }
    // `**` alone is kept for compatibility: the same as `/**`, any binary.
    if !p.starts_with('/') && p != "**" {
        return Some(format!(
            "`{p}` is not absolute; give the full path, e.g. `/usr/bin/{}`",
            p.rsplit('/').next().unwrap_or(p)
        ));
    }
    None
}

/// Fields gathered from one endpoint mapping before cross-field checks.
#[derive(Default)]
struct Raw<'v> {
    host: Option<&'v str>,
    port: Option<u16>,
    ports: Vec<u16>,
    path: Option<String>,
    protocol: String,
    tls: String,
    enforcement_audit: bool,
    access: Option<AccessPreset>,
    rules: Option<Vec<l7::L7Rule>>,
    deny_rules: Option<Vec<l7::L7Rule>>,
    allowed_ips: Vec<IpNet>,
    allow_encoded_slash: bool,
    websocket_credential_rewrite: bool,
    request_body_credential_rewrite: bool,
    allow_uninspected_credentials: bool,
}

fn parse_endpoint(ctx: &mut Ctx<'_>, v: &Value, at: &str) -> Res<Endpoint> {
    let Some(map) = ctx.map(v, at)? else {
        return Err(ctx.err(
            at,
            "empty endpoint; give at least `host` and `port`, e.g. `{host: api.example.com, port: 443}`",
        ));
    };
    let mut raw = Raw::default();
    for (key, value) in ctx.fields(map, at, ENDPOINT_KEYS, ENDPOINT_UNSUPPORTED)? {
        let p = join(at, key);
        match key {
            "host" => raw.host = ctx.str(value, &p, "host: api.example.com")?,
            "port" => raw.port = parse_port(ctx, value, &p)?,
            "ports" => {
                let list = ctx.seq(value, &p, "ports: [80, 443]")?.unwrap_or_default();
                for (i, item) in list.iter().enumerate() {
                    if let Some(port) = parse_port(ctx, item, &format!("{p}[{i}]"))? {
                        raw.ports.push(port);
                    }
                }
            }
            "path" => {
                if !value.is_null() {
                    raw.path = Some(l7::parse_path_glob(ctx, value, &p, "path: \"/v1/**\"")?);
                }
            }
            "protocol" => raw.protocol = parse_protocol(ctx, value, &p)?,
            "tls" => raw.tls = parse_tls(ctx, value, &p)?,
            "enforcement" => raw.enforcement_audit = parse_enforcement(ctx, value, &p)?,
            "access" => {
                if let Some(a) = ctx.str(value, &p, "access: read-only")? {
                    raw.access = Some(AccessPreset::parse(a).ok_or_else(|| {
                        ctx.err(
                            &p,
                            format!(
                                "unknown access preset `{a}`; use read-only, read-write or full"
                            ),
                        )
                    })?);
                }
            }
            "rules" => raw.rules = Some(l7::parse_rules(ctx, value, &p)?),
            "deny_rules" => raw.deny_rules = Some(l7::parse_deny_rules(ctx, value, &p)?),
            "allowed_ips" => raw.allowed_ips = parse_allowed_ips(ctx, value, &p)?,
            "allow_encoded_slash" => raw.allow_encoded_slash = ctx.bool(value, &p, key)?,
            "websocket_credential_rewrite" => {
                raw.websocket_credential_rewrite = ctx.bool(value, &p, key)?;
            }
            "request_body_credential_rewrite" => {
                raw.request_body_credential_rewrite = ctx.bool(value, &p, key)?;
            }
            _ => raw.allow_uninspected_credentials = ctx.bool(value, &p, key)?,
        }
    }
    finish_endpoint(ctx, raw, at)
}

/// Cross-field checks, in a fixed order so the first error is stable.
fn finish_endpoint(ctx: &mut Ctx<'_>, raw: Raw<'_>, at: &str) -> Res<Endpoint> {
    let tcp = raw.protocol == "tcp";
    let l7_protocol = matches!(raw.protocol.as_str(), "rest" | "websocket");
    let host_at = join(at, "host");

    let host = match raw.host.filter(|h| !h.is_empty()) {
        None if tcp => {
            return Err(ctx.err(
                &host_at,
                "missing; `protocol: tcp` needs a DNS host name, e.g. `host: db.example.com`",
            ));
        }
        None if raw.allowed_ips.is_empty() => {
            return Err(ctx.err(
                &host_at,
                "missing; add e.g. `host: api.example.com` (only an endpoint with `allowed_ips` may omit it)",
            ));
        }
        None => None,
        Some(h) => Some(parse_host(h).map_err(|problem| ctx.err(&host_at, problem))?),
    };
    if let Some(h) = &host {
        if tcp && h.ip.is_some() {
            return Err(ctx.err(
                &host_at,
                "`protocol: tcp` needs a DNS host name, not an IP literal; remove `protocol: tcp` (an IP endpoint is plain L4 already)",
            ));
        }
        if tcp && h.trailing_dot {
            return Err(ctx.err(
                &host_at,
                format!(
                    "`protocol: tcp` needs a host name without a trailing dot; write `{}`",
                    h.text
                ),
            ));
        }
    }

    let mut ports = if raw.ports.is_empty() {
        raw.port.into_iter().collect::<Vec<_>>()
    } else {
        if raw.port.is_some_and(|p| !raw.ports.contains(&p)) {
            ctx.warn(
                &join(at, "port"),
                "ignored because `ports` is also given; keep one of them",
            );
        }
        raw.ports.clone()
    };
    if ports.is_empty() {
        return Err(ctx.err(
            &join(at, "port"),
            "missing; add `port: 443` (or `ports: [80, 443]`)",
        ));
    }
    ports.sort_unstable();
    ports.dedup();

    // L7-only fields, in the order they are reported.
    let l7_fields: [(&str, bool); 7] = [
        ("path", raw.path.is_some()),
        ("access", raw.access.is_some()),
        ("rules", raw.rules.is_some()),
        ("deny_rules", raw.deny_rules.is_some()),
        ("allow_encoded_slash", raw.allow_encoded_slash),
        (
            "websocket_credential_rewrite",
            raw.websocket_credential_rewrite,
        ),
        (
            "request_body_credential_rewrite",
            raw.request_body_credential_rewrite,
        ),
    ];
    if !l7_protocol && let Some((field, _)) = l7_fields.iter().find(|(_, present)| *present) {
        let problem = if tcp {
            format!(
                "`{field}` is an L7 field, but `protocol: tcp` is plain L4; remove `{field}` or use `protocol: rest`"
            )
        } else if *field == "deny_rules" {
            "`deny_rules` require L7 inspection; add `protocol: rest` (or `websocket`)".to_string()
        } else {
            format!(
                "`{field}` needs `protocol: rest` (or `websocket`); without a protocol the endpoint is plain L4 and `{field}` would be ignored"
            )
        };
        return Err(ctx.err(&join(at, field), problem));
    }
    if raw.request_body_credential_rewrite && raw.protocol != "rest" {
        return Err(ctx.err(
            &join(at, "request_body_credential_rewrite"),
            "only `protocol: rest` endpoints can rewrite request bodies; remove it",
        ));
    }
    if raw.access.is_some() && raw.rules.is_some() {
        return Err(ctx.err(
            &join(at, "rules"),
            "`rules` and `access` are mutually exclusive; keep one",
        ));
    }
    if raw.deny_rules.is_some() && raw.access.is_none() && raw.rules.is_none() {
        return Err(ctx.err(
            &join(at, "deny_rules"),
            "`deny_rules` need an allow base; add `access` (read-only, read-write or full) or `rules`",
        ));
    }
    if l7_protocol && raw.access.is_none() && raw.rules.is_none() {
        return Err(ctx.err(
            &join(at, "access"),
            format!(
                "missing; `protocol: {}` needs `access` (read-only, read-write or full) or `rules` to define the allowed traffic",
                raw.protocol
            ),
        ));
    }
    if matches!(raw.tls.as_str(), "terminate" | "passthrough") {
        ctx.warn(
            &join(at, "tls"),
            format!(
                "`tls: {}` is deprecated and behaves like omitting `tls` (automatic TLS termination); remove it",
                raw.tls
            ),
        );
    }

    let l7 = l7_protocol.then(|| {
        L7Config::new(
            &raw.protocol,
            raw.access,
            raw.rules.clone().unwrap_or_default(),
            raw.deny_rules.clone().unwrap_or_default(),
        )
    });
    Ok(Endpoint {
        summary: EndpointSummary {
            host_pattern: host.as_ref().map(|h| h.text.clone()).unwrap_or_default(),
            ports,
            protocol: raw.protocol.clone(),
            tls_skip: raw.tls == "skip",
            enforcement_audit: raw.enforcement_audit,
            allowed_ips: raw.allowed_ips.clone(),
            exact_declared_host: false, // set by the rule, which knows its binaries
            host_is_ip_literal: host.as_ref().is_some_and(|h| h.ip.is_some()),
            allow_uninspected_credentials: raw.allow_uninspected_credentials,
        },
        path: raw.path,
        tls: raw.tls,
        l7,
        allow_encoded_slash: raw.allow_encoded_slash,
        websocket_credential_rewrite: raw.websocket_credential_rewrite,
        request_body_credential_rewrite: raw.request_body_credential_rewrite,
    })
}

fn parse_port(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<Option<u16>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64().map(u16::try_from) {
            Some(Ok(p)) if p != 0 => Ok(Some(p)),
            Some(_) => Err(ctx.err(path, format!("port {n} is out of range; use 1-65535"))),
            None if n.as_u64().is_some() => {
                Err(ctx.err(path, format!("port {n} is out of range; use 1-65535")))
            }
            None => Err(ctx.err(path, format!("port {n} is not a whole number; use 1-65535"))),
        },
        Value::String(s) => Err(ctx.err(
            path,
            format!("expected a number, found the string `{s}`; write it without quotes, e.g. 443"),
        )),
        other => Err(ctx.err(
            path,
            format!("expected a port number (1-65535), found {}", kind(other)),
        )),
    }
}

fn parse_protocol(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<String> {
    let p = ctx
        .str(v, path, "protocol: rest")?
        .unwrap_or_default()
        .to_ascii_lowercase();
    match p.as_str() {
        "" | "tcp" | "rest" | "websocket" => Ok(p),
        "graphql" | "mcp" | "json-rpc" | "sql" => Err(ctx.err(
            path,
            format!(
                "protocol `{p}` is not supported by Portcullis yet; use `rest`, or omit `protocol` for plain L4 access"
            ),
        )),
        _ => Err(ctx.err(
            path,
            format!("unknown protocol `{p}`; use rest, websocket or tcp, or omit it for plain L4"),
        )),
    }
}

fn parse_tls(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<String> {
    let t = ctx.str(v, path, "tls: skip")?.unwrap_or_default();
    match t {
        "" | "skip" | "terminate" | "passthrough" => Ok(t.to_string()),
        _ => Err(ctx.err(
            path,
            format!("unknown tls value `{t}`; remove `tls` for automatic TLS termination, or use `tls: skip`"),
        )),
    }
}

/// Whether the endpoint is in audit mode. Omitted means enforce
/// (contract §2.3 departs from OpenShell's audit default).
fn parse_enforcement(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<bool> {
    match ctx.str(v, path, "enforcement: enforce")? {
        None | Some("enforce") => Ok(false),
        Some("audit") => Ok(true),
        Some(other) => Err(ctx.err(
            path,
            format!("unknown enforcement `{other}`; use enforce (the default) or audit"),
        )),
    }
}

fn parse_allowed_ips(ctx: &mut Ctx<'_>, v: &Value, path: &str) -> Res<Vec<IpNet>> {
    let list = ctx
        .seq(v, path, "allowed_ips: [\"10.20.0.0/16\"]")?
        .unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let text = ctx
            .str(item, &at, "- \"10.20.0.0/16\"")?
            .unwrap_or_default();
        let net = parse_net(text).ok_or_else(|| {
            ctx.err(
                &at,
                format!("`{text}` is not an IP address or CIDR; write e.g. `10.20.0.0/16` or `10.20.0.5`"),
            )
        })?;
        if let Some(kind) = ssrf::overlaps_always_blocked(&net) {
            return Err(ctx.err(
                &at,
                format!(
                    "`{text}` overlaps {kind} addresses, which are always blocked; narrow the range"
                ),
            ));
        }
        if net.prefix_len() < MIN_SAFE_PREFIX_LEN {
            ctx.warn(
                &at,
                format!("`{text}` is broader than /{MIN_SAFE_PREFIX_LEN}; prefer a narrower range"),
            );
        }
        out.push(net);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// An IP or CIDR, host bits cleared, IPv4-mapped IPv6 as IPv4 (addresses
/// are compared in that form).
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?
        .trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .ok()
            .map(IpNet::V4);
    }
    Some(net)
}

/// A validated `host`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Host {
    /// Lowercase, no trailing dot; canonical text for IP literals.
    pub text: String,
    pub ip: Option<IpAddr>,
    pub trailing_dot: bool,
}

pub(crate) fn parse_host(raw: &str) -> Result<Host, String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the host contains spaces or control characters; remove them".into());
    }
    if let Some((scheme, rest)) = raw.split_once("://") {
        let bare = rest.split(['/', ':']).next().unwrap_or(rest);
        return Err(format!(
            "`{raw}` includes the scheme `{scheme}://`; give only the host, e.g. `host: {bare}`"
        ));
    }
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return Ok(Host {
            text: ip.to_string(),
            ip: Some(ip),
            trailing_dot: false,
        });
    }
    if raw.contains('/') {
        if raw.parse::<IpNet>().is_ok() {
            return Err(format!(
                "`{raw}` is a network; for address ranges omit `host` and use `allowed_ips: [\"{raw}\"]`"
            ));
        }
        return Err(format!(
            "`{raw}` includes a path; give only the host name (use the endpoint's `path` for an L7 path scope)"
        ));
    }
    if let Some((h, p)) = raw.rsplit_once(':') {
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') {
            return Err(format!(
                "`{raw}` includes a port; write `host: {h}` and `port: {p}`"
            ));
        }
        return Err(format!("`{raw}` is neither a host name nor an IP address"));
    }
    let lower = raw.to_ascii_lowercase();
    let (text, trailing_dot) = match lower.strip_suffix('.') {
        Some(t) => (t.to_string(), true),
        None => (lower, false),
    };
    if text.split('.').any(str::is_empty) {
        return Err(format!(
            "`{raw}` has an empty label (a leading dot or `..`); write e.g. `api.example.com`"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*')))
    {
        return Err(if c.is_ascii() {
            format!("`{raw}` contains `{c}`, which a host name cannot contain")
        } else {
            format!("`{raw}` is not ASCII; use its punycode form (`xn--...`)")
        });
    }
    if text.len() > 253 || text.split('.').any(|l| l.len() > 63) {
        return Err(format!(
            "`{raw}` is too long for a DNS name (labels up to 63, names up to 253 characters)"
        ));
    }
    if let Some(problem) = glob::host_glob_error(&text) {
        return Err(problem);
    }
    Ok(Host {
        text,
        ip: None,
        trailing_dot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        let h = parse_host("API.Example.COM.").unwrap();
        assert_eq!(h.text, "api.example.com");
        assert!(h.trailing_dot);
        let h = parse_host("[2001:DB8::0001]").unwrap();
        assert_eq!(h.text, "2001:db8::1");
        assert!(h.ip.is_some());
        let h = parse_host("::ffff:192.0.2.1").unwrap();
        assert_eq!(h.text, "192.0.2.1");
        assert_eq!(parse_host("*.Example.com").unwrap().text, "*.example.com");
    }

    #[test]
    fn host_mistakes_are_explained() {
        for (raw, needle) in [
            (
                "https://api.github.com/x",
                "give only the host, e.g. `host: api.github.com`",
            ),
            (
                "api.github.com:443",
                "write `host: api.github.com` and `port: 443`",
            ),
            ("api.github.com/v1", "includes a path"),
            ("10.0.0.0/8", "allowed_ips"),
            ("a..b.com", "empty label"),
            ("bücher.de", "punycode"),
            ("a b.com", "spaces"),
            ("a!.com", "contains `!`"),
            ("*.com", "TLD wildcard"),
            ("*", "bare wildcard"),
            ("a.*b.example.com", "mixes"),
            ("a.**.example.com", "first label"),
        ] {
            let e = parse_host(raw).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse_host(&long).unwrap_err().contains("too long"));
    }

    #[test]
    fn nets_are_normalised() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("example.com").is_none());
    }

    #[test]
    fn binary_paths() {
        assert!(binary_path_error("/usr/bin/curl").is_none());
        assert!(binary_path_error("/sandbox/.venv/bin/*").is_none());
        assert!(binary_path_error("**").is_none());
        assert!(
            binary_path_error("curl")
                .unwrap()
                .contains("not absolute; give the full path, e.g. `/usr/bin/curl`")
        );
        assert!(binary_path_error("").is_some());
    }
}
