//! The L7 rule model (reference §1.4): REST and WebSocket allow rules,
//! deny rules and access presets, validated at load and matched purely.
//!
//! Matching here works on an already-canonicalised path and decoded query
//! pairs (§2.7); canonicalisation belongs to the L7 engine.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use serde_yaml::Value;

use super::glob;
use super::yaml::{Ctx, Res, join, kind};

/// An `access` preset (reference §1.4 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessPreset {
    ReadOnly,
    ReadWrite,
    Full,
}

impl AccessPreset {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read-only" => Some(Self::ReadOnly),
            "read-write" => Some(Self::ReadWrite),
            "full" => Some(Self::Full),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
            Self::Full => "full",
        }
    }

    /// The methods the preset allows, each on path `**`. WebSocket presets
    /// speak of the upgrade `GET` and client text frames.
    pub fn methods(self, protocol: &str) -> &'static [&'static str] {
        match (self, protocol) {
            (Self::ReadOnly, "websocket") => &["GET"],
            (Self::ReadWrite, "websocket") => &["GET", "WEBSOCKET_TEXT"],
            (Self::ReadOnly, _) => &["GET", "HEAD", "OPTIONS"],
            (Self::ReadWrite, _) => &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"],
            (Self::Full, _) => &["*"],
        }
    }
}

/// How one query parameter is constrained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryMatcher {
    /// `name: "glob"`
    Glob(String),
    /// `name: {any: ["glob", ...]}`
    Any(Vec<String>),
}

impl QueryMatcher {
    /// Query globs have no delimiter: `*` matches any run of characters.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Glob(g) => glob::segment_matches(g.as_bytes(), value.as_bytes()),
            Self::Any(gs) => gs
                .iter()
                .any(|g| glob::segment_matches(g.as_bytes(), value.as_bytes())),
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Self::Glob(g) => Json::String(g.clone()),
            Self::Any(gs) => json!({ "any": gs }),
        }
    }
}

/// One allow rule (`rules[].allow`) or deny rule (`deny_rules[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Rule {
    /// Upper-case method, or `*` for any.
    pub method: String,
    /// Path glob; `**` alone is any path.
    pub path: String,
    /// Every listed parameter must be present and all its values match.
    pub query: BTreeMap<String, QueryMatcher>,
}

impl L7Rule {
    /// Whether this rule, used as a deny rule, blocks a request. A query
    /// key matches when ANY of its values matches (one bad value is enough
    /// to block), where allow rules need every value to match; a key that
    /// is absent means the rule does not apply. OpenShell's fail-closed
    /// deny semantics (rego `deny_query_params_match`).
    pub fn denies<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        path: &str,
        query: &[(K, V)],
    ) -> bool {
        method_matches(&self.method, method)
            && path_matches(&self.path, path)
            && self.query.iter().all(|(name, matcher)| {
                query
                    .iter()
                    .any(|(k, v)| k.as_ref() == name && matcher.matches(v.as_ref()))
            })
    }

    /// Whether a request matches as an allow rule: method, canonical path
    /// (no query), and decoded query pairs (a name may repeat).
    pub fn matches<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        path: &str,
        query: &[(K, V)],
    ) -> bool {
        method_matches(&self.method, method)
            && path_matches(&self.path, path)
            && self.query.iter().all(|(name, matcher)| {
                let mut values = query
                    .iter()
                    .filter(|(k, _)| k.as_ref() == name)
                    .map(|(_, v)| v.as_ref())
                    .peekable();
                values.peek().is_some() && values.all(|v| matcher.matches(v))
            })
    }

    pub(crate) fn to_json(&self) -> Json {
        let mut obj = serde_json::Map::new();
        obj.insert("method".into(), Json::String(self.method.clone()));
        obj.insert("path".into(), Json::String(self.path.clone()));
        if !self.query.is_empty() {
            obj.insert(
                "query".into(),
                Json::Object(
                    self.query
                        .iter()
                        .map(|(k, m)| (k.clone(), m.to_json()))
                        .collect(),
                ),
            );
        }
        Json::Object(obj)
    }
}

/// `*` is any method; `GET` also allows `HEAD` (rego `method_matches`).
pub fn method_matches(rule: &str, actual: &str) -> bool {
    rule == "*"
        || rule.eq_ignore_ascii_case(actual)
        || (rule.eq_ignore_ascii_case("GET") && actual.eq_ignore_ascii_case("HEAD"))
}

/// REST path glob: `**` alone is any path, otherwise `/`-delimited.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    pattern == "**" || glob::path_matches(pattern, path)
}

/// Specificity of an endpoint `path` scope: its count of non-`*` chars.
/// The most specific matching scope selects the L7 endpoint.
pub fn path_specificity(pattern: &str) -> usize {
    pattern.chars().filter(|&c| c != '*').count()
}

/// The L7 configuration of a `rest` or `websocket` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Config {
    /// `rest` or `websocket`.
    pub protocol: String,
    pub access: Option<AccessPreset>,
    /// The explicit `rules` as written (empty when `access` is used).
    pub rules: Vec<L7Rule>,
    pub deny_rules: Vec<L7Rule>,
    /// `rules`, or the expansion of `access`.
    allow: Vec<L7Rule>,
}

impl L7Config {
    pub fn new(
        protocol: &str,
        access: Option<AccessPreset>,
        rules: Vec<L7Rule>,
        deny_rules: Vec<L7Rule>,
    ) -> Self {
        let allow = match access {
            Some(preset) => preset
                .methods(protocol)
                .iter()
                .map(|m| L7Rule {
                    method: (*m).to_string(),
                    path: "**".into(),
                    query: BTreeMap::new(),
                })
                .collect(),
            None => rules.clone(),
        };
        Self {
            protocol: protocol.to_string(),
            access,
            rules,
            deny_rules,
            allow,
        }
    }

    /// The effective allow list.
    pub fn allow_rules(&self) -> &[L7Rule] {
        &self.allow
    }

    /// Whether some allow rule matches.
    pub fn allows<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        path: &str,
        query: &[(K, V)],
    ) -> bool {
        self.allow.iter().any(|r| r.matches(method, path, query))
    }

    /// The first deny rule that matches, if any. Deny wins over allow.
    pub fn denied_by<K: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        path: &str,
        query: &[(K, V)],
    ) -> Option<&L7Rule> {
        self.deny_rules
            .iter()
            .find(|r| r.denies(method, path, query))
    }
}

const RULE_KEYS: &[&str] = &["method", "path", "query"];
const RULE_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "command",
        "`command` is for the SQL protocol, which Portcullis does not support yet",
    ),
    (
        "operation_type",
        "`operation_type` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "operation_name",
        "`operation_name` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "fields",
        "`fields` is for the GraphQL protocol, which Portcullis does not support yet",
    ),
    (
        "tool",
        "`tool` is for the MCP protocol, which Portcullis does not support yet",
    ),
    (
        "params",
        "`params` is for the MCP protocol, which Portcullis does not support yet",
    ),
];

/// Parses `rules:` (a non-empty list of `{allow: {...}}`).
pub(crate) fn parse_rules(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<Vec<L7Rule>> {
    let example = "rules: [{allow: {method: GET, path: \"/**\"}}]";
    let items = ctx.seq(v, path, example)?.unwrap_or_default();
    if items.is_empty() {
        return Err(ctx.err(
            path,
            "`rules` is empty, which would deny everything; add an allow rule such as \
             `- allow: {method: GET, path: \"/**\"}`, or remove `rules` and use `access`",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(map) = ctx.map(item, &at)? else {
            return Err(ctx.err(
                &at,
                "empty rule; write `- allow: {method: GET, path: \"/**\"}`",
            ));
        };
        let mut allow = None;
        for (key, value) in ctx.fields(map, &at, &["allow"], &[])? {
            if key == "allow" {
                allow = Some(value);
            }
        }
        let allow_path = join(&at, "allow");
        match allow {
            Some(body) => out.push(parse_body(ctx, body, &allow_path)?),
            None => {
                return Err(ctx.err(
                    &allow_path,
                    "missing; each rule needs `allow: {method: ..., path: ...}`",
                ));
            }
        }
    }
    Ok(out)
}

/// Parses `deny_rules:` (a non-empty list of `{method, path, query}`).
pub(crate) fn parse_deny_rules(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<Vec<L7Rule>> {
    let example = "deny_rules: [{method: DELETE, path: \"/**\"}]";
    let items = ctx.seq(v, path, example)?.unwrap_or_default();
    if items.is_empty() {
        return Err(ctx.err(
            path,
            "`deny_rules` is empty; remove it or add a rule such as `- {method: DELETE, path: \"/**\"}`",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_body(ctx, item, &format!("{path}[{i}]")))
        .collect()
}

fn parse_body(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<L7Rule> {
    let map = ctx.map(v, path)?.filter(|m| !m.is_empty()).ok_or_else(|| {
        ctx.err(
            path,
            "empty rule would match nothing; give `method` and `path`, e.g. `{method: GET, path: \"/**\"}`",
        )
    })?;
    let (mut method, mut rule_path, mut query) = (None, None, BTreeMap::new());
    for (key, value) in ctx.fields(map, path, RULE_KEYS, RULE_UNSUPPORTED)? {
        let at = join(path, key);
        match key {
            "method" => method = Some(parse_method(ctx, value, &at)?),
            "path" => rule_path = Some(parse_path_glob(ctx, value, &at, "path: \"/v1/**\"")?),
            _ => query = parse_query(ctx, value, &at)?,
        }
    }
    let Some(method) = method else {
        return Err(ctx.err(
            &join(path, "method"),
            "missing; add `method: GET` (or `method: \"*\"` for any method)",
        ));
    };
    let Some(rule_path) = rule_path else {
        return Err(ctx.err(
            &join(path, "path"),
            "missing; add `path: \"/some/path/**\"` (or `path: \"**\"` for any path)",
        ));
    };
    Ok(L7Rule {
        method,
        path: rule_path,
        query,
    })
}

fn parse_method(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<String> {
    let m = ctx.str(v, path, "method: GET")?.unwrap_or_default();
    if m == "*" {
        return Ok(m.into());
    }
    // RFC 9110 token characters.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'+-.^_`|~".contains(c);
    if m.is_empty() || !m.chars().all(token) {
        return Err(ctx.err(
            path,
            format!("`{m}` is not an HTTP method; use e.g. GET, POST, or \"*\" for any method"),
        ));
    }
    Ok(m.to_ascii_uppercase())
}

/// Validates a REST path glob: an endpoint `path` scope or a rule `path`.
pub(crate) fn parse_path_glob(ctx: &Ctx<'_>, v: &Value, path: &str, example: &str) -> Res<String> {
    let p = ctx.str(v, path, example)?.unwrap_or_default();
    if let Some(problem) = path_glob_error(p) {
        return Err(ctx.err(path, problem));
    }
    Ok(p.to_string())
}

/// Why a REST path glob cannot be loaded, if it cannot.
pub fn path_glob_error(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("empty path; use e.g. `/v1/**`, or `**` for any path".into());
    }
    if !p.starts_with('/') && !p.starts_with("**") {
        return Some(format!(
            "`{p}` must start with `/` (or be `**` for any path); write `/{p}`"
        ));
    }
    if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("a path cannot contain spaces or control characters".into());
    }
    if let Some(c) = p.chars().find(|c| matches!(c, '?' | '#')) {
        return Some(format!(
            "`{c}` cannot appear in a path; query parameters go under `query:`"
        ));
    }
    if p.chars().any(|c| matches!(c, '[' | ']' | '{' | '}')) {
        return Some(
            "`[...]` and `{...}` globs are not supported; use `*` within a segment and `**` across segments".into(),
        );
    }
    if p.split('/').any(|seg| seg.contains("**") && seg != "**") {
        return Some(
            "`**` must be a whole path segment (e.g. `/v1/**`); use `*` inside a segment".into(),
        );
    }
    None
}

fn parse_query(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<BTreeMap<String, QueryMatcher>> {
    let mut out = BTreeMap::new();
    let Some(map) = ctx.map(v, path)? else {
        return Ok(out);
    };
    for (k, value) in map {
        let Value::String(name) = k else {
            return Err(ctx.err(path, "query parameter names must be strings"));
        };
        let at = join(path, name);
        if name.is_empty() {
            return Err(ctx.err(&at, "empty query parameter name"));
        }
        let matcher = match value {
            Value::Mapping(m) => {
                let mut any = None;
                for (key, list) in ctx.fields(m, &at, &["any"], &[])? {
                    if key == "any" {
                        any = Some(list);
                    }
                }
                let any_at = join(&at, "any");
                let list = match any {
                    Some(list) => ctx
                        .seq(list, &any_at, "any: [\"a*\", \"b*\"]")?
                        .unwrap_or_default(),
                    None => &[],
                };
                if list.is_empty() {
                    return Err(ctx.err(
                        &any_at,
                        "needs at least one glob, e.g. `{any: [\"a*\", \"b*\"]}`",
                    ));
                }
                let globs = list
                    .iter()
                    .enumerate()
                    .map(|(i, g)| query_glob(ctx, g, &format!("{any_at}[{i}]")))
                    .collect::<Res<Vec<_>>>()?;
                QueryMatcher::Any(globs)
            }
            other => QueryMatcher::Glob(query_glob(ctx, other, &at)?),
        };
        out.insert(name.clone(), matcher);
    }
    Ok(out)
}

fn query_glob(ctx: &Ctx<'_>, v: &Value, path: &str) -> Res<String> {
    // Unquoted `false` or `2` mean the text; accepting them spares a
    // confusing type error. Floats are ambiguous (`1.0` vs `1`).
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => {
            return Err(ctx.err(
                path,
                format!(
                    "expected a glob string or `{{any: [...]}}`, found {}; quote the value",
                    kind(other)
                ),
            ));
        }
    };
    if text.chars().any(char::is_control) {
        return Err(ctx.err(path, "a query glob cannot contain control characters"));
    }
    if text
        .chars()
        .any(|c| matches!(c, '?' | '[' | ']' | '{' | '}'))
    {
        return Err(ctx.err(
            path,
            "only `*` is a wildcard in query globs; `?`, `[...]` and `{...}` are not supported",
        ));
    }
    Ok(text)
}

/// The canonical JSON of a rule list, in written order.
pub(crate) fn rules_json(rules: &[L7Rule], wrap_allow: bool) -> Json {
    Json::Array(
        rules
            .iter()
            .map(|r| {
                if wrap_allow {
                    json!({ "allow": r.to_json() })
                } else {
                    r.to_json()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            source: "t.yaml",
            warnings: Vec::new(),
        }
    }

    fn rules(yaml: &str) -> Res<Vec<L7Rule>> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        parse_rules(&ctx(), &v, "r")
    }

    fn rule(method: &str, path: &str) -> L7Rule {
        L7Rule {
            method: method.into(),
            path: path.into(),
            query: BTreeMap::new(),
        }
    }

    const NO_QUERY: &[(&str, &str)] = &[];

    #[test]
    fn get_also_allows_head_and_star_allows_all() {
        assert!(method_matches("GET", "HEAD"));
        assert!(method_matches("GET", "get"));
        assert!(!method_matches("HEAD", "GET"));
        assert!(!method_matches("POST", "GET"));
        assert!(method_matches("*", "DELETE"));
    }

    #[test]
    fn presets_expand_per_reference() {
        let ro = L7Config::new("rest", Some(AccessPreset::ReadOnly), vec![], vec![]);
        assert!(ro.allows("GET", "/x", NO_QUERY));
        assert!(ro.allows("OPTIONS", "/x", NO_QUERY));
        assert!(!ro.allows("POST", "/x", NO_QUERY));
        let rw = L7Config::new("rest", Some(AccessPreset::ReadWrite), vec![], vec![]);
        assert!(rw.allows("PATCH", "/x/y", NO_QUERY));
        assert!(!rw.allows("DELETE", "/x", NO_QUERY));
        let full = L7Config::new("rest", Some(AccessPreset::Full), vec![], vec![]);
        assert!(full.allows("DELETE", "/x", NO_QUERY));
        let ws = L7Config::new("websocket", Some(AccessPreset::ReadOnly), vec![], vec![]);
        assert!(ws.allows("GET", "/socket", NO_QUERY));
        assert!(!ws.allows("WEBSOCKET_TEXT", "/socket", NO_QUERY));
        let ws = L7Config::new("websocket", Some(AccessPreset::ReadWrite), vec![], vec![]);
        assert!(ws.allows("WEBSOCKET_TEXT", "/socket", NO_QUERY));
        assert!(!ws.allows("POST", "/socket", NO_QUERY));
    }

    #[test]
    fn deny_rules_are_reported() {
        let cfg = L7Config::new(
            "rest",
            Some(AccessPreset::Full),
            vec![],
            vec![rule("*", "/admin/**")],
        );
        assert!(cfg.allows("GET", "/admin/x", NO_QUERY));
        assert!(cfg.denied_by("GET", "/admin/x", NO_QUERY).is_some());
        assert!(cfg.denied_by("GET", "/public", NO_QUERY).is_none());
    }

    #[test]
    fn query_every_value_must_match_and_keys_must_be_present() {
        let r = &rules(
            "- allow: {method: GET, path: /s, query: {q: \"a*\", tag: {any: [x, y]}, n: 2}}",
        )
        .unwrap()[0];
        assert_eq!(r.query["n"], QueryMatcher::Glob("2".into()));
        let ok = [("q", "abc"), ("tag", "x"), ("n", "2"), ("other", "z")];
        assert!(r.matches("GET", "/s", &ok));
        let bad_value = [("q", "abc"), ("q", "zzz"), ("tag", "y"), ("n", "2")];
        assert!(!r.matches("GET", "/s", &bad_value));
        let missing = [("q", "abc"), ("n", "2")];
        assert!(!r.matches("GET", "/s", &missing));
    }

    #[test]
    fn methods_are_normalised_to_upper_case() {
        assert_eq!(
            rules("- allow: {method: get, path: /x}").unwrap()[0].method,
            "GET"
        );
    }

    #[test]
    fn rule_shape_errors_name_the_path_and_fix() {
        let cases: &[(&str, &str, &str)] = &[
            ("[]", "r", "`rules` is empty"),
            (
                "- {method: GET, path: /x}",
                "r[0].method",
                "known keys are allow",
            ),
            (
                "- allow: {path: /x}",
                "r[0].allow.method",
                "add `method: GET`",
            ),
            ("- allow: {method: GET}", "r[0].allow.path", "add `path:"),
            (
                "- allow: {method: GET, path: v1/x}",
                "r[0].allow.path",
                "must start with `/`",
            ),
            (
                "- allow: {method: 'GE T', path: /x}",
                "r[0].allow.method",
                "not an HTTP method",
            ),
            (
                "- allow: {method: GET, path: '/x?a=1'}",
                "r[0].allow.path",
                "under `query:`",
            ),
            (
                "- allow: {method: GET, path: '/a**'}",
                "r[0].allow.path",
                "whole path segment",
            ),
            (
                "- allow: {method: GET, path: '/{a,b}'}",
                "r[0].allow.path",
                "not supported",
            ),
            (
                "- allow: {method: GET, path: /x, query: {a: {any: []}}}",
                "r[0].allow.query.a.any",
                "at least one",
            ),
            (
                "- allow: {method: GET, path: /x, query: {a: 1.5}}",
                "r[0].allow.query.a",
                "quote the value",
            ),
            (
                "- allow: {method: GET, path: /x, query: {a: 'x?'}}",
                "r[0].allow.query.a",
                "only `*`",
            ),
            (
                "- allow: {method: GET, path: /x, query: {a: {all: [x]}}}",
                "r[0].allow.query.a.all",
                "unknown key",
            ),
            (
                "- allow: {method: GET, path: /x, tool: x}",
                "r[0].allow.tool",
                "MCP",
            ),
            ("- allow: {command: SELECT}", "r[0].allow.command", "SQL"),
            ("- allow: {}", "r[0].allow", "empty rule"),
        ];
        for (yaml, path, needle) in cases {
            let e = rules(yaml).unwrap_err();
            assert_eq!(e.yaml_path, *path, "{yaml}: {e}");
            assert!(e.problem.contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn deny_rule_shape() {
        let v: Value = serde_yaml::from_str("[]").unwrap();
        let e = parse_deny_rules(&ctx(), &v, "d").unwrap_err();
        assert!(e.problem.contains("`deny_rules` is empty"), "{e}");
        let v: Value = serde_yaml::from_str("- {method: '*', path: '/a/**'}").unwrap();
        let d = parse_deny_rules(&ctx(), &v, "d").unwrap();
        assert_eq!(d, vec![rule("*", "/a/**")]);
    }

    #[test]
    fn specificity_counts_non_star_chars() {
        assert_eq!(path_specificity("/v1/**"), 4);
        assert_eq!(path_specificity("**"), 0);
    }
}
