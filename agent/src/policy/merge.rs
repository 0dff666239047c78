//! AddRule merge semantics (reference §5.9), coverage (§4.3 "covers") and
//! exact undo (contract §2.7).
//!
//! A merge works on the canonical JSON of the current policy: it edits one
//! rule, then re-parses the whole document with [`Policy::parse`], so the
//! result is validated and compiled exactly as a loaded policy is. The
//! authorization checks (who would inherit what) then compare the typed
//! rules before and after.
//!
//! A rule grants the product binaries × endpoints × ports. The unit of
//! authorization here is one binary reaching one endpoint (host and path
//! scope) on one port with the endpoint's attributes; "contains" compares
//! those attributes: allow rules by containment, deny rules and
//! `allowed_ips` by presence, flags by implication, `protocol`, `tls`,
//! `enforcement` and `path` by value.
//!
//! Choices where §5.9 leaves room, or where this schema differs:
//! - Folding (no rule of the requested name) only goes into a rule with the
//!   same binary set, so it never shares endpoints between binaries that
//!   did not ask for them; a fold that would still widen an undeclared port
//!   stays on the requested name with a warning.
//! - A rule that allows any binary (no `binaries`) and a rule limited to
//!   named binaries never merge: either way one side's scope would change.
//! - Merging into an existing endpoint needs the same host, the same path
//!   scope and a subset of its ports; anything else is a new endpoint.
//! - Existing `protocol`, `tls`, `enforcement` and `access` win, with a
//!   warning. An existing L4 endpoint stays L4: the proposed L7 rules are not
//!   added (L4 already allows every request on that host and port).
//! - Two L7 protocols on one host, port and path scope are a conflict, in
//!   any rules. Different path scopes may carry different protocols.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use super::l7::{self, AccessPreset, L7Config, L7Rule};
use super::schema::{self, Endpoint, PROVIDER_RULE_PREFIX, Rule};
use super::{Policy, PolicyError, glob, ssrf};

/// Source label for candidate documents in parse errors.
const MERGE_SOURCE: &str = "merge";
const PROPOSAL_SOURCE: &str = "proposal";

/// Host names that always reach a blocked address.
const METADATA_HOST: &str = "metadata.google.internal";

/// Endpoint flags that only L7 endpoints may carry.
const L7_FLAGS: [&str; 3] = [
    "allow_encoded_slash",
    "websocket_credential_rewrite",
    "request_body_credential_rewrite",
];
/// Endpoint flags any endpoint may carry.
const L4_FLAGS: [&str; 1] = ["allow_uninspected_credentials"];

/// A proposed rule, validated and put in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedRule {
    /// The rule key requested.
    pub name: String,
    /// One canonical rule object (`{name, endpoints, binaries}`).
    pub canonical: Json,
}

/// The result of [`add_rule`].
#[derive(Clone, Debug)]
pub struct Merged {
    /// The candidate policy, validated and compiled.
    pub policy: Policy,
    /// The rule key the proposal landed in.
    pub target_rule: String,
    /// Exactly what the merge added, for [`revoke`].
    pub grant: Grant,
    /// `Code: explanation` lines, e.g. `ExistingProtocolRetained: ...`.
    pub warnings: Vec<String>,
}

/// Exactly what one approval added to one rule; stored with the chunk so
/// that undo removes that and nothing more.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The rule key written to.
    pub rule: String,
    /// The approval created the rule.
    #[serde(default)]
    pub created_rule: bool,
    /// Binary paths added to the rule.
    #[serde(default)]
    pub binaries: Vec<String>,
    /// Endpoints appended to the rule, in canonical JSON.
    #[serde(default)]
    pub endpoints: Vec<Json>,
    /// Additions to endpoints that were in the rule before.
    #[serde(default)]
    pub endpoint_changes: Vec<EndpointChange>,
}

impl Grant {
    /// The approval added nothing (the policy already had it all).
    pub fn is_empty(&self) -> bool {
        !self.created_rule
            && self.binaries.is_empty()
            && self.endpoints.is_empty()
            && self.endpoint_changes.is_empty()
    }
}

/// What one approval added to an endpoint that existed before it. The
/// endpoint is identified by host, ports and path scope, which a merge
/// never changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointChange {
    /// Lowercase host or glob; empty for an `allowed_ips`-only endpoint.
    pub host: String,
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The `access` preset that was expanded into explicit rules to make
    /// room for `rules`; undo restores it when only the expansion is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expanded_access: Option<String>,
    /// Allow rules added, as canonical `{"allow": {...}}` objects.
    #[serde(default)]
    pub rules: Vec<Json>,
    /// Deny rules added, canonical.
    #[serde(default)]
    pub deny_rules: Vec<Json>,
    /// `allowed_ips` entries added, canonical text.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Boolean fields turned on, e.g. `allow_encoded_slash`.
    #[serde(default)]
    pub flags: Vec<String>,
}

impl EndpointChange {
    fn is_empty(&self) -> bool {
        self.expanded_access.is_none()
            && self.rules.is_empty()
            && self.deny_rules.is_empty()
            && self.allowed_ips.is_empty()
            && self.flags.is_empty()
    }
}

/// Why a proposal cannot be merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeError {
    /// The rule name or rule is malformed; the text names the field.
    InvalidRule(String),
    /// The rule reaches an address that is always blocked.
    AlwaysBlocked(String),
    /// One of the two rules allows any binary and the other lists binaries.
    BinaryScopeMismatch {
        rule: String,
        /// Empty: the existing rule allows any binary.
        rule_binaries: Vec<String>,
        /// Empty: the proposal asks for any binary.
        proposed_binaries: Vec<String>,
    },
    /// A binary new to the rule would reach an endpoint or port the
    /// proposal did not declare for it.
    NewBinaryWouldInheritAuthorization {
        rule: String,
        binary: String,
        host: String,
        ports: Vec<u16>,
    },
    /// The rule's other binaries would get the new or changed access.
    ExistingBinariesWouldInheritAuthorization {
        rule: String,
        host: String,
        ports: Vec<u16>,
        undeclared_binaries: Vec<String>,
    },
    /// A change would reach ports of a multi-port endpoint that the proposal
    /// did not name.
    UndeclaredPortWouldChange {
        rule: String,
        host: String,
        ports: Vec<u16>,
    },
    /// One host, port and path scope would be inspected with two protocols.
    ConflictingInspection {
        host: String,
        port: u16,
        path: Option<String>,
        protocols: Vec<String>,
    },
    /// The merged policy does not validate.
    CandidateInvalid(String),
}

impl MergeError {
    /// True for scope and ambiguity conflicts with the current policy (gRPC
    /// FAILED_PRECONDITION); false for malformed input (INVALID_ARGUMENT).
    /// A candidate that fails validation counts as a conflict: the proposal
    /// was valid alone, so the current policy is what it clashes with.
    pub fn is_precondition(&self) -> bool {
        !matches!(self, Self::InvalidRule(_) | Self::AlwaysBlocked(_))
    }
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRule(text) | Self::AlwaysBlocked(text) => f.write_str(text),
            Self::BinaryScopeMismatch {
                rule,
                rule_binaries,
                proposed_binaries,
            } => {
                if rule_binaries.is_empty() {
                    write!(
                        f,
                        "rule `{rule}` allows any binary; merging binaries {proposed_binaries:?} into it would narrow it to those; propose it under a new rule name, or without `binaries`"
                    )
                } else {
                    write!(
                        f,
                        "rule `{rule}` is limited to binaries {rule_binaries:?}; a proposal without `binaries` would open it to any binary; list the binaries, or propose it under a new rule name"
                    )
                }
            }
            Self::NewBinaryWouldInheritAuthorization {
                rule,
                binary,
                host,
                ports,
            } => write!(
                f,
                "adding binary `{binary}` to rule `{rule}` would also give it {} on ports {ports:?}, which the proposal does not declare with the same settings; declare that endpoint too, or propose under a new rule name",
                host_label(host)
            ),
            Self::ExistingBinariesWouldInheritAuthorization {
                rule,
                host,
                ports,
                undeclared_binaries,
            } => write!(
                f,
                "rule `{rule}` would give its binaries {undeclared_binaries:?} new or changed access to {} on ports {ports:?}; also declare those binaries, or propose under a new rule name",
                host_label(host)
            ),
            Self::UndeclaredPortWouldChange { rule, host, ports } => write!(
                f,
                "in rule `{rule}`, the change to {} would also apply to its undeclared ports {ports:?}; declare every port of that endpoint, or propose under a new rule name",
                host_label(host)
            ),
            Self::ConflictingInspection {
                host,
                port,
                path,
                protocols,
            } => {
                let scope = path
                    .as_deref()
                    .map(|p| format!(" (path `{p}`)"))
                    .unwrap_or_default();
                write!(
                    f,
                    "{}:{port}{scope} would be inspected as {}; one host, port and path takes one L7 protocol, so propose the protocol already in use",
                    host_label(host),
                    protocols.join(" and ")
                )
            }
            Self::CandidateInvalid(text) => write!(f, "candidate invalid: {text}"),
        }
    }
}

impl std::error::Error for MergeError {}

fn host_label(host: &str) -> String {
    if host.is_empty() {
        "the `allowed_ips` endpoint".to_string()
    } else {
        host.to_string()
    }
}

// ---------------------------------------------------------------------
// propose

/// Validates `rule` (a rule object in policy format: `{name?, endpoints,
/// binaries}`) as the rule `rule_name` by parsing a one-rule document with
/// [`Policy::parse`]; error text names the field, e.g.
/// `endpoints[0].port: missing; add ...`.
pub fn propose(rule_name: &str, rule: &Json) -> Result<ProposedRule, MergeError> {
    check_rule_name(rule_name)?;
    if !rule.is_object() {
        return Err(MergeError::InvalidRule(
            "rule: expected an object such as `{\"endpoints\": [...], \"binaries\": [...]}`".into(),
        ));
    }
    check_not_always_blocked(rule)?;
    let (_, canonical) = parse_one_rule(rule_name, rule)?;
    Ok(ProposedRule {
        name: rule_name.to_string(),
        canonical,
    })
}

fn check_rule_name(name: &str) -> Result<(), MergeError> {
    if name.trim().is_empty() {
        return Err(MergeError::InvalidRule(
            "ruleName: empty; name the rule, e.g. `github_api`".into(),
        ));
    }
    if name.starts_with(PROVIDER_RULE_PREFIX) {
        return Err(MergeError::InvalidRule(format!(
            "ruleName: the `{PROVIDER_RULE_PREFIX}` prefix is reserved for rules composed from providers; choose another name"
        )));
    }
    Ok(())
}

/// `validate_rule_not_always_blocked`: loopback, link-local, unspecified
/// and metadata destinations can never be allowed, so say so up front
/// rather than let an approval fail later. Unparseable values are left to
/// the policy parser, which names them.
fn check_not_always_blocked(rule: &Json) -> Result<(), MergeError> {
    let endpoints = rule
        .get("endpoints")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, ep) in endpoints.iter().enumerate() {
        if let Some(host) = ep.get("host").and_then(Json::as_str)
            && let Some(why) = blocked_host(host)
        {
            return Err(MergeError::AlwaysBlocked(format!(
                "endpoints[{i}].host: {host} is always blocked ({why}); it cannot be allowed"
            )));
        }
        let ips = ep
            .get("allowed_ips")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, ip) in ips.iter().enumerate() {
            if let Some(text) = ip.as_str()
                && let Some(net) = schema::parse_net(text)
                && let Some(kind) = ssrf::overlaps_always_blocked(&net)
            {
                return Err(MergeError::AlwaysBlocked(format!(
                    "endpoints[{i}].allowed_ips[{j}]: {text} overlaps {kind} addresses, which are always blocked; it cannot be allowed"
                )));
            }
        }
    }
    Ok(())
}

/// Why a host is always blocked, if it is.
fn blocked_host(raw: &str) -> Option<&'static str> {
    let host = schema::parse_host(raw).ok()?;
    if let Some(ip) = host.ip {
        return ssrf::is_always_blocked(ip);
    }
    let name = host.text.as_str();
    if name == "localhost" || name.ends_with(".localhost") {
        return Some("loopback");
    }
    // A glob that matches the metadata name reaches it as surely.
    if name == METADATA_HOST || (name.contains('*') && glob::host_matches(name, METADATA_HOST)) {
        return Some("metadata");
    }
    None
}

/// Parses `rule` as the only rule of a document; returns the typed rule
/// and its canonical JSON. Errors name the field relative to the rule.
fn parse_one_rule(name: &str, rule: &Json) -> Result<(Rule, Json), MergeError> {
    let mut rules = Map::new();
    rules.insert(name.to_string(), rule.clone());
    let doc = json!({ "version": 1, "network_policies": Json::Object(rules) });
    let policy = Policy::parse(PROPOSAL_SOURCE, &crate::policy::document_text(&doc))
        .map_err(|e| MergeError::InvalidRule(relative_error(name, &e)))?;
    let typed = policy.rule(name).cloned();
    let canonical = policy
        .canonical_json()
        .get("network_policies")
        .and_then(|r| r.get(name))
        .cloned();
    match (typed, canonical) {
        (Some(typed), Some(canonical)) => Ok((typed, canonical)),
        _ => Err(MergeError::InvalidRule(format!(
            "rule `{name}` did not survive validation; check its fields"
        ))),
    }
}

/// `network_policies.x.endpoints[0].port: ...` becomes
/// `endpoints[0].port: ...`: the proposer wrote the rule, not the document.
fn relative_error(name: &str, e: &PolicyError) -> String {
    let prefix = format!("network_policies.{name}");
    let path = match e.yaml_path.strip_prefix(&prefix) {
        Some("") => "rule",
        Some(rest) => rest.strip_prefix('.').unwrap_or(rest),
        None => e.yaml_path.as_str(),
    };
    format!("{path}: {}", e.problem)
}

/// The proposal re-checked: its fields are public, so it may not have come
/// from [`propose`].
fn validated(proposed: &ProposedRule) -> Result<(Rule, Json), MergeError> {
    check_rule_name(&proposed.name)?;
    check_not_always_blocked(&proposed.canonical)?;
    parse_one_rule(&proposed.name, &proposed.canonical)
}

// ---------------------------------------------------------------------
// add_rule

/// One merge attempt, not yet checked for inherited authorization.
struct Attempt {
    policy: Policy,
    grant: Grant,
    warnings: Vec<String>,
}

/// Merges the proposal into `current` (§5.9): into the rule of the
/// requested name if it exists, else folded into a rule with the same
/// binaries that shares an endpoint, else as a new rule. All or nothing:
/// `current` is never changed.
pub fn add_rule(current: &Policy, proposed: &ProposedRule) -> Result<Merged, MergeError> {
    let (incoming, incoming_json) = validated(proposed)?;
    let name = proposed.name.as_str();
    let doc = current.canonical_json();

    if let Some(existing) = current.rule(name) {
        check_binary_scopes(existing, &incoming)?;
        let attempt = merge_into_rule(&doc, name, &incoming_json)?;
        check_inheritance(existing, &incoming, merged_rule(&attempt.policy, name)?)?;
        return finish(current, name, attempt);
    }

    let (first_overlap, same_binaries) = fold_candidates(current, &incoming);
    let mut warnings = Vec::new();
    if let Some(key) = same_binaries {
        let attempt = merge_into_rule(&doc, &key, &incoming_json)?;
        let existing = current.rule(&key).ok_or_else(|| missing_rule(&key))?;
        // Only inheritance conflicts come back here; each goes away when
        // the proposal keeps its own rule.
        match check_inheritance(existing, &incoming, merged_rule(&attempt.policy, &key)?) {
            Ok(()) => return finish(current, &key, attempt),
            Err(e) => warnings.push(kept_name_warning(name, &key, &e)),
        }
    } else if let Some(key) = first_overlap {
        warnings.push(format!(
            "KeptRequestedRuleNameToAvoidWidening: kept rule `{name}` on its own instead of folding it into `{key}`, which shares an endpoint: their binaries differ, so folding would share endpoints between binaries that did not ask for them"
        ));
    }
    let mut attempt = insert_new_rule(&doc, name, &incoming_json)?;
    warnings.append(&mut attempt.warnings);
    attempt.warnings = warnings;
    finish(current, name, attempt)
}

fn kept_name_warning(name: &str, key: &str, reason: &MergeError) -> String {
    format!(
        "KeptRequestedRuleNameToAvoidWidening: kept rule `{name}` on its own instead of folding it into `{key}`: {reason}"
    )
}

/// The last check shared by every path, then the result.
fn finish(current: &Policy, target: &str, attempt: Attempt) -> Result<Merged, MergeError> {
    check_no_new_inspection_conflicts(current, &attempt.policy)?;
    Ok(Merged {
        policy: attempt.policy,
        target_rule: target.to_string(),
        grant: attempt.grant,
        warnings: attempt.warnings,
    })
}

fn missing_rule(key: &str) -> MergeError {
    MergeError::CandidateInvalid(format!("rule `{key}` is missing after the merge"))
}

fn merged_rule<'p>(policy: &'p Policy, key: &str) -> Result<&'p Rule, MergeError> {
    policy.rule(key).ok_or_else(|| missing_rule(key))
}

/// The first (by key) non-provider rule sharing an endpoint with the
/// proposal, and the first such rule whose binaries equal the proposal's.
fn fold_candidates(current: &Policy, incoming: &Rule) -> (Option<String>, Option<String>) {
    let mut first_overlap = None;
    for rule in current.rules() {
        if rule.key.starts_with(PROVIDER_RULE_PREFIX) || !rules_share_endpoint(rule, incoming) {
            continue;
        }
        if same_binary_set(&rule.binaries, &incoming.binaries) {
            return (
                first_overlap.or(Some(rule.key.clone())),
                Some(rule.key.clone()),
            );
        }
        first_overlap.get_or_insert_with(|| rule.key.clone());
    }
    (first_overlap, None)
}

fn rules_share_endpoint(existing: &Rule, incoming: &Rule) -> bool {
    incoming.endpoints.iter().any(|i| {
        existing.endpoints.iter().any(|e| {
            same_selector(e, i) && e.summary.ports.iter().any(|p| i.summary.ports.contains(p))
        })
    })
}

/// Same host pattern and path scope: the same endpoint selector.
fn same_selector(a: &Endpoint, b: &Endpoint) -> bool {
    a.summary.host_pattern == b.summary.host_pattern && a.path == b.path
}

fn same_binary_set(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn check_binary_scopes(existing: &Rule, incoming: &Rule) -> Result<(), MergeError> {
    if existing.binaries.is_empty() == incoming.binaries.is_empty() {
        return Ok(());
    }
    Err(MergeError::BinaryScopeMismatch {
        rule: existing.key.clone(),
        rule_binaries: existing.binaries.clone(),
        proposed_binaries: incoming.binaries.clone(),
    })
}

fn insert_new_rule(doc: &Json, name: &str, incoming: &Json) -> Result<Attempt, MergeError> {
    let mut doc = doc.clone();
    rules_mut(&mut doc)?.insert(name.to_string(), incoming.clone());
    let policy = reparse(&doc)?;
    let created = merged_rule(&policy, name)?;
    let grant = Grant {
        rule: name.to_string(),
        created_rule: true,
        binaries: created.binaries.clone(),
        endpoints: canonical_endpoints(&policy, name),
        endpoint_changes: Vec::new(),
    };
    Ok(Attempt {
        policy,
        grant,
        warnings: Vec::new(),
    })
}

/// Merges the proposal's endpoints and binaries into rule `key` of `doc`.
fn merge_into_rule(doc: &Json, key: &str, incoming: &Json) -> Result<Attempt, MergeError> {
    let mut doc = doc.clone();
    let rule = rules_mut(&mut doc)?
        .get_mut(key)
        .and_then(Json::as_object_mut)
        .ok_or_else(|| missing_rule(key))?;
    let mut endpoints = list(rule, "endpoints");
    let original_len = endpoints.len();
    let mut changes: BTreeMap<usize, EndpointChange> = BTreeMap::new();
    let mut warnings = Vec::new();

    for inc in incoming
        .get("endpoints")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_object)
    {
        let partner = endpoints
            .iter()
            .position(|e| e.as_object().is_some_and(|e| merges_into(e, inc)));
        let Some(index) = partner else {
            endpoints.push(Json::Object(inc.clone()));
            continue;
        };
        let Some(existing) = endpoints.get_mut(index).and_then(Json::as_object_mut) else {
            continue;
        };
        let change = changes
            .entry(index)
            .or_insert_with(|| EndpointChange::identify(existing));
        merge_endpoint(existing, inc, change, &mut warnings)?;
    }
    rule.insert("endpoints".into(), Json::Array(endpoints));

    let added_binaries = append_binaries(rule, incoming);
    let policy = reparse(&doc)?;
    let grant = Grant {
        rule: key.to_string(),
        created_rule: false,
        binaries: added_binaries,
        endpoints: canonical_endpoints(&policy, key)
            .into_iter()
            .skip(original_len)
            .collect(),
        // Only changes to endpoints that existed before: later ones are
        // recorded whole in `endpoints`.
        endpoint_changes: changes
            .into_iter()
            .filter(|(i, c)| *i < original_len && !c.is_empty())
            .map(|(_, c)| c)
            .collect(),
    };
    Ok(Attempt {
        policy,
        grant,
        warnings,
    })
}

/// Appends the proposal's binaries not already in the rule; returns them.
fn append_binaries(rule: &mut Map<String, Json>, incoming: &Json) -> Vec<String> {
    let mut binaries = list(rule, "binaries");
    let mut added = Vec::new();
    for path in incoming
        .get("binaries")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("path").and_then(Json::as_str))
    {
        let present = binaries
            .iter()
            .any(|b| b.get("path").and_then(Json::as_str) == Some(path));
        if !present {
            binaries.push(json!({ "path": path }));
            added.push(path.to_string());
        }
    }
    rule.insert("binaries".into(), Json::Array(binaries));
    added
}

/// An incoming endpoint merges into an existing one with the same host and
/// path scope whose ports include all of its ports.
fn merges_into(existing: &Map<String, Json>, incoming: &Map<String, Json>) -> bool {
    let existing_ports = ports_of(existing);
    text(existing, "host") == text(incoming, "host")
        && path_of(existing) == path_of(incoming)
        && ports_of(incoming)
            .iter()
            .all(|p| existing_ports.contains(p))
}

/// Merges one incoming endpoint into an existing one, recording additions.
fn merge_endpoint(
    existing: &mut Map<String, Json>,
    incoming: &Map<String, Json>,
    change: &mut EndpointChange,
    warnings: &mut Vec<String>,
) -> Result<(), MergeError> {
    let at = endpoint_label(existing);
    let (old_protocol, new_protocol) = (text(existing, "protocol"), text(incoming, "protocol"));
    if is_l7(old_protocol) && is_l7(new_protocol) && old_protocol != new_protocol {
        return Err(MergeError::ConflictingInspection {
            host: text(existing, "host").to_string(),
            port: ports_of(incoming).first().copied().unwrap_or_default(),
            path: path_of(existing).map(str::to_string),
            protocols: vec![old_protocol.to_string(), new_protocol.to_string()],
        });
    }
    if old_protocol != new_protocol {
        warnings.push(format!(
            "ExistingProtocolRetained: endpoint {at} keeps protocol `{}` and ignores the proposed `{}`{}",
            protocol_label(old_protocol),
            protocol_label(new_protocol),
            if is_l7(new_protocol) {
                "; its L7 fields were not added (the endpoint already allows every request)"
            } else {
                ""
            }
        ));
    }
    for (field, code) in [
        ("tls", "ExistingTlsRetained"),
        ("enforcement", "ExistingEnforcementRetained"),
    ] {
        let (old, new) = (text(existing, field), text(incoming, field));
        if old != new {
            warnings.push(format!(
                "{code}: endpoint {at} keeps {field} `{}` and ignores the proposed `{}`",
                or_auto(old),
                or_auto(new)
            ));
        }
    }
    if is_l7(old_protocol) && old_protocol == new_protocol {
        merge_l7(existing, incoming, change, warnings, &at);
    }
    let ips = append_unique(existing, incoming, "allowed_ips");
    change
        .allowed_ips
        .extend(ips.iter().filter_map(Json::as_str).map(str::to_string));
    turn_on_flags(existing, incoming, &L4_FLAGS, change);
    Ok(())
}

/// The L7 part of an endpoint merge, for two endpoints of one protocol.
fn merge_l7(
    existing: &mut Map<String, Json>,
    incoming: &Map<String, Json>,
    change: &mut EndpointChange,
    warnings: &mut Vec<String>,
    at: &str,
) {
    let incoming_rules = list(incoming, "rules");
    let old_access = text(existing, "access").to_string();
    let new_access = text(incoming, "access");
    if !incoming_rules.is_empty() {
        let protocol = text(existing, "protocol").to_string();
        let mut rules = if old_access.is_empty() {
            list(existing, "rules")
        } else {
            preset_rules(&old_access, &protocol)
        };
        let mut added = Vec::new();
        for rule in incoming_rules {
            if !rules.contains(&rule) && !added.contains(&rule) {
                added.push(rule);
            }
        }
        // Expanding a preset that already holds every proposed rule would
        // only churn the document.
        if !added.is_empty() {
            if !old_access.is_empty() {
                existing.remove("access");
                warnings.push(format!(
                    "ExpandedAccessPreset: endpoint {at}: access `{old_access}` was expanded into explicit rules so the proposed rules could be added"
                ));
                change.expanded_access = Some(old_access);
            }
            rules.extend(added.iter().cloned());
            set_list(existing, "rules", rules);
            change.rules.extend(added);
        }
    } else if !new_access.is_empty() && new_access != old_access {
        warnings.push(if old_access.is_empty() {
            format!(
                "IgnoredIncomingAccessBecauseRulesExist: endpoint {at} has explicit rules; the proposed access `{new_access}` was ignored"
            )
        } else {
            format!(
                "ExistingAccessRetained: endpoint {at} keeps access `{old_access}` and ignores the proposed `{new_access}`"
            )
        });
    }
    change
        .deny_rules
        .extend(append_unique(existing, incoming, "deny_rules"));
    turn_on_flags(existing, incoming, &L7_FLAGS, change);
}

/// Appends the entries of `incoming[key]` missing from `existing[key]`;
/// returns those added.
fn append_unique(
    existing: &mut Map<String, Json>,
    incoming: &Map<String, Json>,
    key: &str,
) -> Vec<Json> {
    let mut items = list(existing, key);
    let mut added = Vec::new();
    for item in list(incoming, key) {
        if !items.contains(&item) {
            items.push(item.clone());
            added.push(item);
        }
    }
    set_list(existing, key, items);
    added
}

fn turn_on_flags(
    existing: &mut Map<String, Json>,
    incoming: &Map<String, Json>,
    flags: &[&str],
    change: &mut EndpointChange,
) {
    for &key in flags {
        if flag(incoming, key) && !flag(existing, key) {
            existing.insert(key.into(), Json::Bool(true));
            change.flags.push(key.to_string());
        }
    }
}

fn protocol_label(p: &str) -> &str {
    if p.is_empty() { "L4 (none)" } else { p }
}

fn or_auto(v: &str) -> &str {
    if v.is_empty() { "auto" } else { v }
}

fn is_l7(protocol: &str) -> bool {
    matches!(protocol, "rest" | "websocket")
}

/// An access preset as canonical explicit rules (each method on `**`).
fn preset_rules(access: &str, protocol: &str) -> Vec<Json> {
    AccessPreset::parse(access)
        .map(|p| {
            p.methods(protocol)
                .iter()
                .map(|m| json!({ "allow": { "method": m, "path": "**" } }))
                .collect()
        })
        .unwrap_or_default()
}

/// `host:ports` (and path) for messages.
fn endpoint_label(ep: &Map<String, Json>) -> String {
    let host = host_label(text(ep, "host"));
    let ports = ports_of(ep)
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match path_of(ep) {
        Some(p) => format!("{host}:{ports} (path `{p}`)"),
        None => format!("{host}:{ports}"),
    }
}

// ---------------------------------------------------------------------
// Authorization inheritance

/// Rejects a merge that grants something the proposal did not declare:
/// new binaries reaching the rule's other endpoints, the rule's other
/// binaries reaching new or changed endpoints, or a change landing on
/// ports the proposal did not name.
fn check_inheritance(existing: &Rule, incoming: &Rule, merged: &Rule) -> Result<(), MergeError> {
    let new_binary = incoming
        .binaries
        .iter()
        .find(|b| !existing.binaries.contains(b));
    let undeclared: Vec<String> = existing
        .binaries
        .iter()
        .filter(|b| !incoming.binaries.contains(b))
        .cloned()
        .collect();
    for ep in &merged.endpoints {
        let host = ep.summary.host_pattern.clone();
        if let Some(binary) = new_binary {
            let ports = ports_where(ep, |p| !declares(incoming, ep, p));
            if !ports.is_empty() {
                return Err(MergeError::NewBinaryWouldInheritAuthorization {
                    rule: merged.key.clone(),
                    binary: binary.clone(),
                    host,
                    ports,
                });
            }
        }
        let changed = ports_where(ep, |p| !unchanged(existing, ep, p));
        let unnamed: Vec<u16> = changed
            .iter()
            .copied()
            .filter(|&p| !names_port(incoming, ep, p))
            .collect();
        if !unnamed.is_empty() {
            return Err(MergeError::UndeclaredPortWouldChange {
                rule: merged.key.clone(),
                host,
                ports: unnamed,
            });
        }
        if !changed.is_empty() && !undeclared.is_empty() {
            return Err(MergeError::ExistingBinariesWouldInheritAuthorization {
                rule: merged.key.clone(),
                host,
                ports: changed,
                undeclared_binaries: undeclared,
            });
        }
    }
    Ok(())
}

fn ports_where(ep: &Endpoint, keep: impl Fn(u16) -> bool) -> Vec<u16> {
    ep.summary
        .ports
        .iter()
        .copied()
        .filter(|&p| keep(p))
        .collect()
}

/// The proposal itself asks for everything `merged` grants on `port`.
fn declares(incoming: &Rule, merged: &Endpoint, port: u16) -> bool {
    incoming
        .endpoints
        .iter()
        .any(|d| same_selector(d, merged) && endpoint_contains(d, merged, port, Compare::Grants))
}

/// Some endpoint before the merge granted exactly what `merged` grants on
/// `port`.
fn unchanged(existing: &Rule, merged: &Endpoint, port: u16) -> bool {
    existing.endpoints.iter().any(|e| {
        same_selector(e, merged)
            && endpoint_contains(e, merged, port, Compare::Attributes)
            && endpoint_contains(merged, e, port, Compare::Attributes)
    })
}

fn names_port(incoming: &Rule, merged: &Endpoint, port: u16) -> bool {
    incoming
        .endpoints
        .iter()
        .any(|d| same_selector(d, merged) && d.summary.ports.contains(&port))
}

// ---------------------------------------------------------------------
// Inspection conflicts

type Selector = (String, u16, Option<String>);

/// L7 protocols per host, port and path scope, across every rule.
fn inspection_protocols(policy: &Policy) -> BTreeMap<Selector, BTreeSet<String>> {
    let mut out: BTreeMap<Selector, BTreeSet<String>> = BTreeMap::new();
    for ep in policy.rules().iter().flat_map(|r| &r.endpoints) {
        let Some(cfg) = &ep.l7 else { continue };
        for &port in &ep.summary.ports {
            out.entry((ep.summary.host_pattern.clone(), port, ep.path.clone()))
                .or_default()
                .insert(cfg.protocol.clone());
        }
    }
    out
}

/// A conflict the current policy already has does not block unrelated
/// merges; a new one does.
fn check_no_new_inspection_conflicts(before: &Policy, after: &Policy) -> Result<(), MergeError> {
    let old = inspection_protocols(before);
    for ((host, port, path), protocols) in inspection_protocols(after) {
        if protocols.len() < 2 {
            continue;
        }
        let preexisting = old
            .get(&(host.clone(), port, path.clone()))
            .is_some_and(|o| protocols.is_subset(o));
        if !preexisting {
            return Err(MergeError::ConflictingInspection {
                host,
                port,
                path,
                protocols: protocols.into_iter().collect(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------
// covers

/// True when every (endpoint, port, binary) the proposal asks for is
/// already granted by `policy` with at least the proposed L7 allowances
/// (§4.3): for every proposed endpoint and port and every proposed binary,
/// some loaded rule with a covering binary scope has an endpoint whose
/// attributes contain the proposal. A proposal for any binary (no
/// `binaries`) is covered only by rules for any binary. An invalid
/// proposal is never covered.
pub fn covers(policy: &Policy, proposed: &ProposedRule) -> bool {
    let Ok((incoming, _)) = validated(proposed) else {
        return false;
    };
    incoming.endpoints.iter().all(|ep| {
        ep.summary.ports.iter().all(|&port| {
            if incoming.binaries.is_empty() {
                policy
                    .rules()
                    .iter()
                    .any(|r| r.binaries.is_empty() && rule_grants(r, ep, port))
            } else {
                incoming.binaries.iter().all(|b| {
                    policy
                        .rules()
                        .iter()
                        .any(|r| binary_in_scope(r, b) && rule_grants(r, ep, port))
                })
            }
        })
    })
}

fn rule_grants(rule: &Rule, proposed: &Endpoint, port: u16) -> bool {
    rule.endpoints.iter().any(|e| {
        host_covers(&e.summary.host_pattern, &proposed.summary.host_pattern)
            && endpoint_contains(e, proposed, port, Compare::Attributes)
    })
}

/// The loaded host pattern is the proposed host, or a glob matching it.
fn host_covers(loaded: &str, proposed: &str) -> bool {
    loaded == proposed
        || (loaded.contains('*')
            && !proposed.is_empty()
            && !proposed.contains('*')
            && glob::host_matches(loaded, proposed))
}

/// The rule allows the binary: any binary, the same path, or a glob in
/// the rule that matches the (literal) proposed path.
fn binary_in_scope(rule: &Rule, binary: &str) -> bool {
    rule.binaries.is_empty()
        || rule.binaries.iter().any(|b| {
            b == binary
                || (b.contains('*') && !binary.contains('*') && glob::path_matches(b, binary))
        })
}

// ---------------------------------------------------------------------
// Endpoint containment

/// How deny rules take part in [`endpoint_contains`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// The inner endpoint's deny rules must be in the outer one: "the
    /// proposal's settings are in effect" (coverage, and both directions
    /// of "unchanged").
    Attributes,
    /// The outer endpoint must grant at least what the inner grants: its
    /// deny rules must all be in the inner one (a declaration check).
    Grants,
}

/// Whether `outer` on `port` contains `inner`; hosts are compared by the
/// caller.
fn endpoint_contains(outer: &Endpoint, inner: &Endpoint, port: u16, mode: Compare) -> bool {
    let (o, i) = (&outer.summary, &inner.summary);
    o.ports.contains(&port)
        && outer.path == inner.path
        && o.tls_skip == i.tls_skip
        && o.enforcement_audit == i.enforcement_audit
        && i.allowed_ips
            .iter()
            .all(|n| o.allowed_ips.iter().any(|m| m.contains(n)))
        && flags_of(inner)
            .iter()
            .zip(flags_of(outer))
            .all(|(&inner_on, outer_on)| !inner_on || outer_on)
        && l7_contains(outer.l7.as_ref(), inner.l7.as_ref(), mode)
}

fn flags_of(ep: &Endpoint) -> [bool; 4] {
    [
        ep.allow_encoded_slash,
        ep.websocket_credential_rewrite,
        ep.request_body_credential_rewrite,
        ep.summary.allow_uninspected_credentials,
    ]
}

/// L4 (no inspection) allows every request, so it contains any L7 grant;
/// an L7 endpoint contains L4 only when it allows everything.
fn l7_contains(outer: Option<&L7Config>, inner: Option<&L7Config>, mode: Compare) -> bool {
    match (outer, inner) {
        (None, None) => true,
        (None, Some(i)) => mode == Compare::Grants || i.deny_rules.is_empty(),
        (Some(o), None) => allows_everything(o),
        (Some(o), Some(i)) => {
            let denies = match mode {
                Compare::Attributes => all_within(&i.deny_rules, &o.deny_rules),
                Compare::Grants => all_within(&o.deny_rules, &i.deny_rules),
            };
            o.protocol == i.protocol && all_within(i.allow_rules(), o.allow_rules()) && denies
        }
    }
}

fn allows_everything(cfg: &L7Config) -> bool {
    cfg.deny_rules.is_empty()
        && cfg
            .allow_rules()
            .iter()
            .any(|r| r.method == "*" && r.path == "**" && r.query.is_empty())
}

/// Every rule of `inner` is contained in some rule of `outer`.
fn all_within(inner: &[L7Rule], outer: &[L7Rule]) -> bool {
    inner
        .iter()
        .all(|i| outer.iter().any(|o| rule_contains(o, i)))
}

/// Every request `inner` matches, `outer` matches too (conservatively:
/// false when unsure).
fn rule_contains(outer: &L7Rule, inner: &L7Rule) -> bool {
    let method = outer.method == "*"
        || outer.method == inner.method
        || (outer.method == "GET" && inner.method == "HEAD");
    // Each query constraint of the outer rule must be one the inner has.
    let query = outer
        .query
        .iter()
        .all(|(k, m)| inner.query.get(k) == Some(m));
    method && query && path_contains(&outer.path, &inner.path)
}

fn path_contains(outer: &str, inner: &str) -> bool {
    if outer == inner || outer == "**" {
        return true;
    }
    if !inner.contains('*') {
        return l7::path_matches(outer, inner);
    }
    // A glob inside a glob: only a literal prefix followed by `/**` is
    // sure to contain every path the inner glob matches below it.
    outer
        .strip_suffix("**")
        .filter(|prefix| prefix.ends_with('/') && !prefix.contains('*'))
        .is_some_and(|prefix| inner.starts_with(prefix) && inner.len() > prefix.len())
}

// ---------------------------------------------------------------------
// revoke

/// Removes from `current` exactly what `grant` added and nothing more:
/// parts added by the grant that are still present are removed; parts
/// that existed before the grant (or were added later by something else
/// and are not in the grant) stay. A rule the grant created is removed
/// when nothing else remains in it. A rule never widens to any binary by
/// losing its last binary: in a rule the grant created, later additions
/// keep those binaries; elsewhere the rule is removed instead.
pub fn revoke(current: &Policy, grant: &Grant) -> Result<Policy, MergeError> {
    let mut doc = current.canonical_json();
    let rules = rules_mut(&mut doc)?;
    let remove = rules
        .get_mut(&grant.rule)
        .and_then(Json::as_object_mut)
        .is_some_and(|rule| revoke_in_rule(rule, grant));
    if remove {
        rules.remove(&grant.rule);
    }
    reparse(&doc)
}

/// Undoes the grant inside one rule; true when the rule should go.
fn revoke_in_rule(rule: &mut Map<String, Json>, grant: &Grant) -> bool {
    let mut endpoints = list(rule, "endpoints");
    for added in grant.endpoints.iter().filter_map(Json::as_object) {
        remove_added_endpoint(&mut endpoints, added);
    }
    for change in &grant.endpoint_changes {
        let found = endpoints
            .iter_mut()
            .filter_map(Json::as_object_mut)
            .find(|e| change.identifies(e));
        if let Some(ep) = found {
            undo_change(ep, change);
        }
    }
    // No endpoints left: the rule grants nothing (and would not load).
    if endpoints.is_empty() {
        return true;
    }
    rule.insert("endpoints".into(), Json::Array(endpoints));
    let before = list(rule, "binaries");
    let mut binaries = before.clone();
    binaries.retain(|b| {
        b.get("path")
            .and_then(Json::as_str)
            .is_none_or(|p| !grant.binaries.iter().any(|g| g == p))
    });
    if !before.is_empty() && binaries.is_empty() {
        // An empty list would mean any binary. In a rule the grant created,
        // what remains was added later and declared for these binaries (the
        // inheritance checks saw to that), so they stay; anywhere else the
        // rule goes rather than widen.
        return !grant.created_rule;
    }
    rule.insert("binaries".into(), Json::Array(binaries));
    false
}

/// Removes an endpoint the grant appended; if others added to it since,
/// removes only the grant's parts and keeps what they added.
fn remove_added_endpoint(endpoints: &mut Vec<Json>, added: &Map<String, Json>) {
    let exact = endpoints.iter().position(|e| e.as_object() == Some(added));
    let index = exact.or_else(|| {
        endpoints
            .iter()
            .position(|e| e.as_object().is_some_and(|e| same_identity(e, added)))
    });
    let Some(index) = index else { return };
    if exact.is_none()
        && let Some(ep) = endpoints.get_mut(index).and_then(Json::as_object_mut)
    {
        subtract_added(ep, added);
        if !nothing_left(ep) {
            return;
        }
    }
    endpoints.remove(index);
}

fn same_identity(a: &Map<String, Json>, b: &Map<String, Json>) -> bool {
    text(a, "host") == text(b, "host") && ports_of(a) == ports_of(b) && path_of(a) == path_of(b)
}

/// Takes the grant's parts out of an endpoint it created.
fn subtract_added(ep: &mut Map<String, Json>, added: &Map<String, Json>) {
    let added_access = text(added, "access").to_string();
    let mut grant_rules = list(added, "rules");
    if !added_access.is_empty() {
        if text(ep, "access") == added_access {
            ep.remove("access");
        } else {
            // Someone expanded the grant's preset to append rules.
            grant_rules = preset_rules(&added_access, text(ep, "protocol"));
        }
    }
    remove_items(ep, "rules", &grant_rules);
    remove_items(ep, "deny_rules", &list(added, "deny_rules"));
    remove_items(ep, "allowed_ips", &list(added, "allowed_ips"));
    for key in L7_FLAGS.iter().chain(&L4_FLAGS) {
        if flag(added, key) {
            ep.remove(*key);
        }
    }
}

/// Nothing another grant could need is left in an endpoint.
fn nothing_left(ep: &Map<String, Json>) -> bool {
    if is_l7(text(ep, "protocol")) {
        // Deny rules alone grant nothing (and do not load).
        return text(ep, "access").is_empty() && list(ep, "rules").is_empty();
    }
    list(ep, "allowed_ips").is_empty() && !L4_FLAGS.iter().any(|k| flag(ep, k))
}

fn undo_change(ep: &mut Map<String, Json>, change: &EndpointChange) {
    remove_items(ep, "rules", &change.rules);
    remove_items(ep, "deny_rules", &change.deny_rules);
    let ips: Vec<Json> = change.allowed_ips.iter().map(|s| json!(s)).collect();
    remove_items(ep, "allowed_ips", &ips);
    for key in &change.flags {
        ep.remove(key);
    }
    // Put the preset back when nothing was appended to its expansion since.
    if let Some(access) = &change.expanded_access
        && text(ep, "access").is_empty()
        && list(ep, "rules") == preset_rules(access, text(ep, "protocol"))
    {
        ep.remove("rules");
        ep.insert("access".into(), json!(access));
    }
}

fn remove_items(ep: &mut Map<String, Json>, key: &str, remove: &[Json]) {
    if remove.is_empty() {
        return;
    }
    let mut items = list(ep, key);
    items.retain(|i| !remove.contains(i));
    set_list(ep, key, items);
}

impl EndpointChange {
    fn identify(ep: &Map<String, Json>) -> Self {
        Self {
            host: text(ep, "host").to_string(),
            ports: ports_of(ep),
            path: path_of(ep).map(str::to_string),
            ..Self::default()
        }
    }

    fn identifies(&self, ep: &Map<String, Json>) -> bool {
        text(ep, "host") == self.host
            && ports_of(ep) == self.ports
            && path_of(ep) == self.path.as_deref()
    }
}

// ---------------------------------------------------------------------
// JSON helpers (canonical documents)

fn rules_mut(doc: &mut Json) -> Result<&mut Map<String, Json>, MergeError> {
    let top = doc.as_object_mut().ok_or_else(|| {
        MergeError::CandidateInvalid("document: the policy is not a mapping".into())
    })?;
    top.entry("network_policies")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| {
            MergeError::CandidateInvalid("network_policies: expected a mapping of rules".into())
        })
}

fn reparse(doc: &Json) -> Result<Policy, MergeError> {
    Policy::parse(MERGE_SOURCE, &crate::policy::document_text(doc))
        .map_err(|e| MergeError::CandidateInvalid(format!("{}: {}", e.yaml_path, e.problem)))
}

/// The canonical JSON of rule `key`'s endpoints.
fn canonical_endpoints(policy: &Policy, key: &str) -> Vec<Json> {
    policy
        .canonical_json()
        .get("network_policies")
        .and_then(|r| r.get(key))
        .and_then(|r| r.get("endpoints"))
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default()
}

fn text<'a>(obj: &'a Map<String, Json>, key: &str) -> &'a str {
    obj.get(key).and_then(Json::as_str).unwrap_or("")
}

fn list(obj: &Map<String, Json>, key: &str) -> Vec<Json> {
    obj.get(key)
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Canonical form leaves empty lists out (and `rules: []` does not load).
fn set_list(obj: &mut Map<String, Json>, key: &str, items: Vec<Json>) {
    if items.is_empty() {
        obj.remove(key);
    } else {
        obj.insert(key.into(), Json::Array(items));
    }
}

fn flag(obj: &Map<String, Json>, key: &str) -> bool {
    obj.get(key).and_then(Json::as_bool).unwrap_or(false)
}

fn ports_of(obj: &Map<String, Json>) -> Vec<u16> {
    obj.get("ports")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_u64)
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

fn path_of(obj: &Map<String, Json>) -> Option<&str> {
    obj.get("path").and_then(Json::as_str)
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
