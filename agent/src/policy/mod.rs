//! Policy: the OpenShell-compatible YAML schema (reference §1), validated
//! into an immutable snapshot that answers the L4 question "may this
//! binary reach this host:port?" (§2.4) and carries the L7 rules (§1.4).
//! Evaluation is pure: no I/O, no clocks.
//!
//! Layout: `yaml` walks the YAML value with paths, `schema` validates the
//! document into [`Rule`]s, `l7` holds the L7 rule model, `canonical`
//! the hashed form, `snapshot` the lookup index, `ssrf` the destination
//! checks that follow an allow.

pub mod glob;
pub mod l7;
pub mod merge;
pub mod ssrf;

pub(crate) mod canonical;
mod schema;
mod snapshot;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

pub use l7::{AccessPreset, L7Config, L7Rule, QueryMatcher};
pub use schema::{Endpoint, PROVIDER_RULE_PREFIX, Rule};

/// The largest policy text accepted (OpenShell's `MAX_POLICY_SIZE`).
pub const MAX_POLICY_BYTES: usize = 262_144;

/// Why a policy did not load: where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {yaml_path}: {problem}")]
pub struct PolicyError {
    pub source_name: String,
    /// Where in the document, e.g. `network_policies.github.endpoints[0].host`
    /// (or `line 3, column 5` for YAML syntax errors).
    pub yaml_path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// What the proxy knows about a connection at L4.
#[derive(Clone, Copy, Debug)]
pub struct L4Request<'a> {
    /// Names the workload used for this destination (from the agent's
    /// DNS); empty for a direct-IP connect. The IP is always a candidate too.
    pub hostnames: &'a [String],
    pub ip: IpAddr,
    pub port: u16,
    /// The exe path, then each ancestor's.
    pub binaries: &'a [&'a Path],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Decision {
    Allow(L4Allow),
    /// `reason` is the exact OpenShell (rego) deny text.
    Deny {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Allow {
    /// The matching `network_policies` key; the lexicographically smallest
    /// when several match.
    pub rule: String,
    /// The candidate host (name or IP text) that matched, lowercased.
    pub host: String,
    /// The matched endpoint's connection metadata.
    pub endpoint: EndpointSummary,
}

/// An endpoint's connection metadata: what the proxy needs after an allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSummary {
    /// Lowercase host, glob or canonical IP text; empty for an endpoint
    /// that has only `allowed_ips`.
    pub host_pattern: String,
    /// Sorted, without duplicates.
    pub ports: Vec<u16>,
    /// "", "tcp", "rest" or "websocket".
    pub protocol: String,
    pub tls_skip: bool,
    pub enforcement_audit: bool,
    /// Host bits cleared, sorted; IPv4-mapped ranges stored as IPv4.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// The host has no wildcard and the rule lists at least one binary
    /// (§2.5 item 4): private addresses may be dialled.
    pub exact_declared_host: bool,
    pub host_is_ip_literal: bool,
    pub allow_uninspected_credentials: bool,
}

/// An endpoint that matches a request's host, port and binary.
#[derive(Clone, Debug)]
pub struct EndpointMatch<'p> {
    pub rule: &'p Rule,
    /// Position in `rule.endpoints`.
    pub endpoint_index: usize,
    pub endpoint: &'p Endpoint,
    /// The candidate host that matched, lowercased.
    pub host: String,
}

/// An immutable, compiled policy. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Snapshot>,
}

struct Snapshot {
    /// Sorted by key.
    rules: Vec<Rule>,
    index: snapshot::Index,
    warnings: Vec<String>,
    canonical: serde_json::Value,
    hash: String,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("hash", &self.inner.hash)
            .field("rules", &self.inner.rules.len())
            .field("warnings", &self.inner.warnings)
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::deny_all()
    }
}

impl Policy {
    /// No rules: denies everything, as a sandbox without a policy.
    pub fn deny_all() -> Self {
        Self::build(Vec::new(), &BTreeMap::new(), Vec::new())
    }

    /// Parses and validates a policy; the first error wins. `source_name`
    /// (a path, or a label like `proposal 12`) prefixes errors.
    pub fn parse(source_name: &str, yaml: &str) -> Result<Self, PolicyError> {
        Self::parse_with_limit(source_name, yaml, MAX_POLICY_BYTES)
    }

    /// [`Policy::parse`] with another size limit, for trusted sources
    /// (and benchmarks) that need more than [`MAX_POLICY_BYTES`].
    pub fn parse_with_limit(
        source_name: &str,
        yaml: &str,
        max_bytes: usize,
    ) -> Result<Self, PolicyError> {
        Self::parse_from(source_name, yaml, max_bytes, schema::Origin::User)
    }

    /// Parses a document the agent composed itself: a validated user
    /// policy plus `_provider_<name>` rules built from provider profiles
    /// (see `providers::profile::compose`). The same validation as
    /// [`Policy::parse`], except that `_provider_` rule keys are allowed.
    /// Never give it user input: the reserved prefix is what stops a user
    /// rule from posing as a provider's.
    ///
    /// No size limit: the parts were size-checked when they were loaded,
    /// and a user policy's canonical JSON may be longer than its YAML.
    pub fn parse_composed(source_name: &str, doc: &str) -> Result<Self, PolicyError> {
        Self::parse_from(source_name, doc, usize::MAX, schema::Origin::Composed)
    }

    fn parse_from(
        source_name: &str,
        yaml: &str,
        max_bytes: usize,
        origin: schema::Origin,
    ) -> Result<Self, PolicyError> {
        let mut ctx = yaml::Ctx {
            source: source_name,
            warnings: Vec::new(),
        };
        if yaml.len() > max_bytes {
            return Err(ctx.err(
                "document",
                format!(
                    "the policy is {} bytes, over the limit of {max_bytes} bytes; remove or merge rules",
                    yaml.len()
                ),
            ));
        }
        let doc = schema::parse_document(&mut ctx, yaml, origin)?;
        Ok(Self::build(doc.rules, &doc.sections, ctx.warnings))
    }

    fn build(
        rules: Vec<Rule>,
        sections: &BTreeMap<String, serde_json::Value>,
        warnings: Vec<String>,
    ) -> Self {
        let canonical = canonical::document_json(&rules, sections);
        let hash = canonical::sha256_hex(&canonical::canonical_bytes(&canonical));
        let index = snapshot::Index::build(&rules);
        Self {
            inner: Arc::new(Snapshot {
                rules,
                index,
                warnings,
                canonical,
                hash,
            }),
        }
    }

    /// Plain-language warnings, e.g. sections parsed but not enforced.
    pub fn warnings(&self) -> &[String] {
        &self.inner.warnings
    }

    /// Lowercase hex SHA-256 of the canonical bytes: stable across key
    /// order and `port`/`ports` spelling, different on any real change.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    pub fn rule_count(&self) -> usize {
        self.inner.rules.len()
    }

    /// The document as parsed and normalised, map keys sorted.
    /// [`document_text`] turns it (or a document built from it) back into
    /// text the parser reads.
    pub fn canonical_json(&self) -> serde_json::Value {
        self.inner.canonical.clone()
    }

    /// The rules, sorted by key.
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    pub fn rule(&self, key: &str) -> Option<&Rule> {
        let rules = &self.inner.rules;
        rules
            .binary_search_by(|r| r.key.as_str().cmp(key))
            .ok()
            .and_then(|i| rules.get(i))
    }

    /// One endpoint, e.g. to find the L7 rules behind an allow.
    pub fn endpoint(&self, rule: &str, index: usize) -> Option<&Endpoint> {
        self.rule(rule)?.endpoints.get(index)
    }

    /// Allow iff some rule matches the endpoint and the binary (exe or an
    /// ancestor). The matched rule is the lexicographically smallest key.
    pub fn evaluate_l4(&self, req: &L4Request<'_>) -> L4Decision {
        self.inner.index.evaluate(&self.inner.rules, req)
    }

    /// Every endpoint of every rule that matches the request's host, port
    /// and binary, in key then endpoint order: the set the L7 decision
    /// ranges over (§1.4: allow from any, deny from any).
    pub fn matching_endpoints(&self, req: &L4Request<'_>) -> Vec<EndpointMatch<'_>> {
        self.inner
            .index
            .matching(&self.inner.rules, req)
            .into_iter()
            .map(|(rule, endpoint_index, endpoint, host)| EndpointMatch {
                rule,
                endpoint_index,
                endpoint,
                host,
            })
            .collect()
    }
}

/// A policy document built as JSON, as text the YAML parser reads back
/// exactly. JSON text is nearly YAML, but serde_json writes C1 controls and
/// noncharacters raw, and libyaml refuses them (U+0080-U+009F, U+FFFE) or
/// reads U+0085 as a line break; serde_yaml escapes them. Found by the
/// `policy_yaml` fuzz target.
pub fn document_text(doc: &serde_json::Value) -> String {
    serde_yaml::to_string(doc).unwrap_or_else(|_| doc.to_string())
}
