//! Static replacement for OpenShell's Z3 prover (reference §5.6) and the
//! advisory security notes on a proposed rule (§5.7).
//!
//! No solver: the policy language has no negation across rules, so the
//! reachability facts the prover derives are a direct walk over every
//! rule binary × endpoint × port of the compiled policy. The walk
//! over-approximates (deny rules and path scopes are ignored), which errs
//! toward warning.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::{AccessPreset, Endpoint, Policy, Rule, glob, ssrf};

/// The whole `validation_result` when the candidate adds nothing.
pub const NO_NEW_FINDINGS: &str = "prover: no new findings";

/// How a finding names a rule that lists no binaries.
pub const ANY_BINARY: &str = "*";

/// Binaries whose traffic the L7 engine cannot read (OpenShell's capability
/// registry, `protocols[].bypasses_l7`), matched on the exe basename.
/// Debian installs netcat under its alternatives' target names.
const L7_OPAQUE_BINARIES: &[&str] = &[
    "git",
    "git-remote-http",
    "git-remote-https",
    "ssh",
    "scp",
    "sftp",
    "ftp",
    "nc",
    "nc.openbsd",
    "nc.traditional",
    "ncat",
    "netcat",
    "socat",
    "telnet",
    "rsync",
    "openssl",
];

/// Hosts the sandbox holds credentials for (from attached providers'
/// profiles; issue "providers" fills it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSet {
    pub targets: Vec<CredentialTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialTarget {
    pub provider: String,
    /// Host or `*.example.com` pattern, lower-case.
    pub host: String,
    /// Empty = any port.
    pub ports: Vec<u16>,
}

impl CredentialSet {
    /// Whether a credential may be sent to some host the endpoint pattern
    /// admits on `port`. Coverage works both ways, like the runtime's
    /// first-label wildcards: a credential for `*.github.com` covers the
    /// endpoint `api.github.com`, and the endpoint `*.github.com` is
    /// credentialed by a credential for `api.github.com`.
    pub fn covers(&self, host_pattern: &str, port: u16) -> bool {
        let endpoint = host_pattern.to_ascii_lowercase();
        self.targets.iter().any(|t| {
            (t.ports.is_empty() || t.ports.contains(&port))
                && hosts_overlap(&t.host.to_ascii_lowercase(), &endpoint)
        })
    }
}

/// Whether some host is named by both a credential host and an endpoint
/// host. Either may be a glob; for an address-range endpoint (hostless
/// `allowed_ips`) the endpoint text is a CIDR.
fn hosts_overlap(credential: &str, endpoint: &str) -> bool {
    if credential.is_empty() || endpoint.is_empty() {
        return false;
    }
    if credential == endpoint {
        return true;
    }
    if let Ok(ip) = credential.parse::<IpAddr>() {
        return net_of(endpoint).is_some_and(|net| net.contains(&ip.to_canonical()));
    }
    // Two globs overlap if either admits the other read as a name: exact
    // for glob-vs-name, a close over-approximation for glob-vs-glob.
    glob::host_matches(credential, endpoint) || glob::host_matches(endpoint, credential)
}

/// An endpoint host text as a network: a CIDR, or an IP literal as a /32
/// (/128). IPv4-mapped addresses compare as IPv4, as the policy stores them.
fn net_of(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| IpNet::from(ip.to_canonical()))
    })
}

/// The prover's finding categories (no severities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    LinkLocalReach,
    L7BypassCredentialed,
    CredentialReachExpansion,
    CapabilityExpansion,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinkLocalReach => "link_local_reach",
            Self::L7BypassCredentialed => "l7_bypass_credentialed",
            Self::CredentialReachExpansion => "credential_reach_expansion",
            Self::CapabilityExpansion => "capability_expansion",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reachability fact. Rule names are not part of it, so renaming a
/// rule changes no finding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    pub category: Category,
    /// The binary path or glob as written; [`ANY_BINARY`] for any binary.
    pub binary: String,
    /// Host, host glob, or (hostless endpoint) `allowed_ips` entry.
    pub host: String,
    pub port: u16,
    /// The HTTP method, for `capability_expansion` only; `*` is one value.
    pub method: Option<String>,
}

impl Finding {
    fn new(category: Category, binary: &str, host: &str, port: u16) -> Self {
        Self {
            category,
            binary: binary.to_string(),
            host: host.to_string(),
            port,
            method: None,
        }
    }

    /// The `validation_result` line, without its leading newline.
    fn line(&self) -> String {
        let target = host_port(&self.host, self.port);
        match self.category {
            Category::CapabilityExpansion => format!(
                "  {}: {} on {target} via {}",
                self.category,
                self.method.as_deref().unwrap_or("*"),
                self.binary
            ),
            _ => format!("  {}: {target} via {}", self.category, self.binary),
        }
    }
}

/// `host:port`, with IPv6 text bracketed so the port stays readable.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Findings for one policy.
pub fn findings(policy: &Policy, creds: &CredentialSet) -> BTreeSet<Finding> {
    let mut out = BTreeSet::new();
    for rule in policy.rules() {
        rule_findings(rule, creds, &mut out);
    }
    out
}

/// The facts of one rule: its binaries × endpoints × ports.
fn rule_findings(rule: &Rule, creds: &CredentialSet, out: &mut BTreeSet<Finding>) {
    let binaries = rule_binaries(rule);
    for endpoint in &rule.endpoints {
        let inspected = is_l7_inspected(endpoint);
        // L4 (and uninspected) endpoints contribute no methods.
        let methods = if inspected {
            allowed_methods(endpoint)
        } else {
            BTreeSet::new()
        };
        for (host, link_local) in endpoint_hosts(endpoint) {
            for &port in &endpoint.summary.ports {
                let credentialed = creds.covers(&host, port);
                for &binary in &binaries {
                    if link_local {
                        out.insert(Finding::new(Category::LinkLocalReach, binary, &host, port));
                    }
                    if !credentialed {
                        continue;
                    }
                    out.insert(Finding::new(
                        Category::CredentialReachExpansion,
                        binary,
                        &host,
                        port,
                    ));
                    // Extension over OpenShell: any binary on an endpoint the
                    // L7 engine does not enforce carries credentials past
                    // inspection just as an opaque binary does.
                    if is_l7_opaque_binary(binary) || !inspected {
                        out.insert(Finding::new(
                            Category::L7BypassCredentialed,
                            binary,
                            &host,
                            port,
                        ));
                    }
                    for method in &methods {
                        out.insert(Finding {
                            method: Some(method.clone()),
                            ..Finding::new(Category::CapabilityExpansion, binary, &host, port)
                        });
                    }
                }
            }
        }
    }
}

/// The rule's binaries as written, or [`ANY_BINARY`] when it lists none.
fn rule_binaries(rule: &Rule) -> Vec<&str> {
    if rule.binaries.is_empty() {
        vec![ANY_BINARY]
    } else {
        rule.binaries.iter().map(String::as_str).collect()
    }
}

/// Whether the L7 engine reads and enforces this endpoint's requests: an
/// L7 protocol, TLS terminated, and enforce mode (audit forwards anything).
fn is_l7_inspected(endpoint: &Endpoint) -> bool {
    endpoint.l7.is_some() && !endpoint.summary.tls_skip && !endpoint.summary.enforcement_audit
}

/// The methods of the effective allow rules (access presets expanded).
fn allowed_methods(endpoint: &Endpoint) -> BTreeSet<String> {
    endpoint
        .l7
        .iter()
        .flat_map(|l7| l7.allow_rules())
        .map(|r| r.method.clone())
        .collect()
}

/// Whether a rule binary (path or glob) is, or may match, a binary whose
/// traffic L7 inspection cannot read. Any-binary rules include them all.
fn is_l7_opaque_binary(binary: &str) -> bool {
    if binary == ANY_BINARY {
        return true;
    }
    let basename = binary.rsplit('/').next().unwrap_or(binary);
    L7_OPAQUE_BINARIES
        .iter()
        .any(|name| glob::segment_matches(basename.as_bytes(), name.as_bytes()))
}

/// The host texts facts are keyed on, each with whether it reaches a
/// link-local or metadata address: the host pattern, or for a hostless
/// endpoint each `allowed_ips` entry.
fn endpoint_hosts(endpoint: &Endpoint) -> Vec<(String, bool)> {
    let summary = &endpoint.summary;
    if summary.host_pattern.is_empty() {
        return summary
            .allowed_ips
            .iter()
            .map(|net| (net.to_string(), net_is_link_local(net)))
            .collect();
    }
    let link_local = host_is_link_local(&summary.host_pattern)
        || summary.allowed_ips.iter().any(net_is_link_local);
    vec![(summary.host_pattern.clone(), link_local)]
}

/// An IP literal in 169.254/16 or fe80::/10 (or a metadata address), or a
/// name or glob that admits a metadata host name.
fn host_is_link_local(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => matches!(ssrf::is_always_blocked(ip), Some("link-local" | "metadata")),
        Err(_) => ssrf::METADATA_HOSTNAMES
            .iter()
            .any(|name| glob::host_matches(host, name)),
    }
}

fn net_is_link_local(net: &IpNet) -> bool {
    matches!(
        ssrf::overlaps_always_blocked(net),
        Some("link-local" | "metadata")
    )
}

/// New findings of the candidate relative to the current policy, sorted.
/// A candidate finding is old when the current policy already has it, or
/// has one that subsumes it (any binary, a binary or host glob that
/// matches it, or method `*`). `capability_expansion` entries whose
/// (binary, host, port) is in the `credential_reach_expansion` delta are
/// dropped: the new reach already says it.
pub fn new_findings(current: &Policy, candidate: &Policy, creds: &CredentialSet) -> Vec<Finding> {
    let before = findings(current, creds);
    // Only a finding with a wildcard can subsume another: scan those alone
    // so large policies stay linear-ish.
    let wide: Vec<&Finding> = before.iter().filter(|f| is_wide(f)).collect();
    let delta: Vec<Finding> = findings(candidate, creds)
        .into_iter()
        .filter(|f| !before.contains(f) && !wide.iter().any(|old| subsumes(old, f)))
        .collect();
    let new_reach: BTreeSet<(&str, &str, u16)> = delta
        .iter()
        .filter(|f| f.category == Category::CredentialReachExpansion)
        .map(|f| (f.binary.as_str(), f.host.as_str(), f.port))
        .collect();
    delta
        .iter()
        .filter(|f| {
            f.category != Category::CapabilityExpansion
                || !new_reach.contains(&(f.binary.as_str(), f.host.as_str(), f.port))
        })
        .cloned()
        .collect()
}

/// Whether a finding has a wildcard binary, host or method.
fn is_wide(f: &Finding) -> bool {
    f.binary.contains('*') || f.host.contains('*') || f.method.as_deref() == Some("*")
}

/// Whether an existing finding already grants everything `new` does.
fn subsumes(old: &Finding, new: &Finding) -> bool {
    old.category == new.category
        && old.port == new.port
        && binary_subsumes(&old.binary, &new.binary)
        && host_subsumes(&old.host, &new.host)
        && match (&old.method, &new.method) {
            (Some(o), Some(n)) => o == n || o == "*",
            (o, n) => o == n,
        }
}

fn binary_subsumes(old: &str, new: &str) -> bool {
    old == new
        || old == ANY_BINARY
        || (old.contains('*') && !new.contains('*') && glob::path_matches(old, new))
}

fn host_subsumes(old: &str, new: &str) -> bool {
    old == new || (old.contains('*') && !new.contains('*') && glob::host_matches(old, new))
}

/// The `validation_result` text for a delta (reference §5.6 grammar).
pub fn validation_result(new: &[Finding]) -> String {
    if new.is_empty() {
        return NO_NEW_FINDINGS.to_string();
    }
    let plural = if new.len() == 1 { "" } else { "s" };
    let mut out = format!("prover: {} new finding{plural}", new.len());
    for f in new {
        out.push('\n');
        out.push_str(&f.line());
    }
    out
}

/// Ports of databases and caches: direct access skips every HTTP control.
const DATA_STORE_PORTS: &[(u16, &str)] = &[
    (5432, "PostgreSQL"),
    (3306, "MySQL"),
    (6379, "Redis"),
    (27017, "MongoDB"),
    (9200, "Elasticsearch"),
    (11211, "memcached"),
    (5672, "AMQP"),
];

/// Ports above this are ephemeral (IANA dynamic range).
const HIGHEST_SERVICE_PORT: u16 = 49152;

/// Private and reserved ranges an `allowed_ips` entry should not open
/// silently (always-blocked ranges fail at load instead).
const INTERNAL_NETS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "fc00::/7",
    "fec0::/10",
    "2001:db8::/32",
    "64:ff9b::/96",
];

/// The kinds of note, in the order they are reported.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NoteKind {
    UninspectedCredentials,
    InternalIpHost,
    WildcardHost,
    InternalAllowedIps,
    HostlessAllowedIps,
    EphemeralPort,
    DataStorePort,
    AnyBinary,
    EveryMethodEveryPath,
}

/// Advisory notes on one proposed rule (reference §5.7). They block
/// auto-approval and approve-all (unless the operator includes flagged
/// chunks). Ordered by kind, then endpoint; duplicates dropped.
pub fn security_notes(rule: &Rule) -> Vec<String> {
    let mut notes: Vec<(NoteKind, String)> =
        rule.endpoints.iter().flat_map(endpoint_notes).collect();
    if rule.binaries.is_empty() {
        notes.push((
            NoteKind::AnyBinary,
            "The rule lists no binaries, so any process in the sandbox would get this access; name the binaries that need it.".to_string(),
        ));
    }
    // Stable: endpoints keep their order within a kind.
    notes.sort_by_key(|(kind, _)| *kind);
    let mut seen = BTreeSet::new();
    notes
        .into_iter()
        .filter_map(|(_, text)| seen.insert(text.clone()).then_some(text))
        .collect()
}

fn endpoint_notes(endpoint: &Endpoint) -> Vec<(NoteKind, String)> {
    let s = &endpoint.summary;
    let host = s.host_pattern.as_str();
    let mut notes = Vec::new();
    if s.allow_uninspected_credentials {
        notes.push((
            NoteKind::UninspectedCredentials,
            format!(
                "`allow_uninspected_credentials` is set on {}: credentials may travel over a connection Portcullis does not inspect.",
                endpoint_label(endpoint)
            ),
        ));
    }
    if let Ok(ip) = host.parse::<IpAddr>()
        && ssrf::is_internal(ip)
        && ssrf::is_always_blocked(ip).is_none()
    {
        notes.push((
            NoteKind::InternalIpHost,
            format!(
                "Host `{host}` is an internal IP address: the sandbox would reach a private network service directly."
            ),
        ));
    }
    if host.contains('*') {
        notes.push((
            NoteKind::WildcardHost,
            format!(
                "Host `{host}` contains a wildcard: it admits every matching host name, not one host."
            ),
        ));
    }
    for net in s.allowed_ips.iter().filter(|n| net_is_internal(n)) {
        notes.push((
            NoteKind::InternalAllowedIps,
            format!(
                "`allowed_ips` entry `{net}` includes private or internal addresses: the sandbox could reach internal services in that range."
            ),
        ));
    }
    if host.is_empty() && !s.allowed_ips.is_empty() {
        let nets: Vec<String> = s.allowed_ips.iter().map(IpNet::to_string).collect();
        notes.push((
            NoteKind::HostlessAllowedIps,
            format!(
                "An endpoint has `allowed_ips` ({}) but no host: it admits any destination in those ranges, whatever its name.",
                nets.join(", ")
            ),
        ));
    }
    for &port in &s.ports {
        if port > HIGHEST_SERVICE_PORT {
            notes.push((
                NoteKind::EphemeralPort,
                format!(
                    "Port {port} is above {HIGHEST_SERVICE_PORT}, in the ephemeral range: unusual for a service, and a common choice for tunnels."
                ),
            ));
        }
        if let Some((_, service)) = DATA_STORE_PORTS.iter().find(|(p, _)| *p == port) {
            notes.push((
                NoteKind::DataStorePort,
                format!(
                    "Port {port} is the {service} port: direct data-store access bypasses HTTP inspection."
                ),
            ));
        }
    }
    if grants_every_method_on_every_path(endpoint) {
        notes.push((
            NoteKind::EveryMethodEveryPath,
            format!(
                "The L7 endpoint {} grants every method on every path (`access: full` or method `*` on `**`); list the methods and paths needed instead.",
                endpoint_label(endpoint)
            ),
        ));
    }
    notes
}

/// `host:port[,port]` for notes; the address ranges for a hostless endpoint.
fn endpoint_label(endpoint: &Endpoint) -> String {
    let s = &endpoint.summary;
    let host = if s.host_pattern.is_empty() {
        let nets: Vec<String> = s.allowed_ips.iter().map(IpNet::to_string).collect();
        nets.join(",")
    } else {
        s.host_pattern.clone()
    };
    let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
    if host.contains(':') {
        format!("`[{host}]:{}`", ports.join(","))
    } else {
        format!("`{host}:{}`", ports.join(","))
    }
}

/// Whether an `allowed_ips` entry intersects a private or reserved range.
fn net_is_internal(net: &IpNet) -> bool {
    let overlaps_listed = INTERNAL_NETS
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .any(|r| r.contains(&net.network()) || net.contains(&r.network()));
    let network = net.network();
    overlaps_listed || (ssrf::is_internal(network) && ssrf::is_always_blocked(network).is_none())
}

fn grants_every_method_on_every_path(endpoint: &Endpoint) -> bool {
    endpoint.l7.as_ref().is_some_and(|l7| {
        l7.access == Some(AccessPreset::Full)
            || l7
                .allow_rules()
                .iter()
                .any(|r| r.method == "*" && r.path == "**")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &str = "/usr/bin/curl";
    const GIT: &str = "/usr/bin/git";

    /// A policy from `key: rule` flow-YAML lines.
    fn policy(rules: &[&str]) -> Policy {
        let mut doc = String::from("version: 1\nnetwork_policies:\n");
        for r in rules {
            doc.push_str("  ");
            doc.push_str(r);
            doc.push('\n');
        }
        Policy::parse("test", &doc).unwrap()
    }

    /// The rule `r` of a one-rule policy.
    fn rule(body: &str) -> Rule {
        policy(&[&format!("r: {body}")]).rule("r").unwrap().clone()
    }

    fn creds(targets: &[(&str, &[u16])]) -> CredentialSet {
        CredentialSet {
            targets: targets
                .iter()
                .map(|(host, ports)| CredentialTarget {
                    provider: "github".into(),
                    host: (*host).into(),
                    ports: ports.to_vec(),
                })
                .collect(),
        }
    }

    fn github() -> CredentialSet {
        creds(&[("api.github.com", &[443])])
    }

    fn of(set: &BTreeSet<Finding>, category: Category) -> Vec<&Finding> {
        set.iter().filter(|f| f.category == category).collect()
    }

    fn f(category: Category, binary: &str, host: &str, port: u16, method: Option<&str>) -> Finding {
        Finding {
            category,
            binary: binary.into(),
            host: host.into(),
            port,
            method: method.map(str::to_string),
        }
    }

    const GITHUB_READ_CURL: &str = "gh: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-only}], binaries: [{path: /usr/bin/curl}]}";

    #[test]
    fn link_local_reach_for_ip_literals_without_credentials() {
        let p = policy(&[
            "meta: {endpoints: [{host: 169.254.169.254, port: 80}], binaries: [{path: /usr/bin/curl}]}",
            "ll6: {endpoints: [{host: \"fe80::1\", port: 8080}]}",
        ]);
        let all = findings(&p, &CredentialSet::default());
        assert_eq!(
            of(&all, Category::LinkLocalReach),
            vec![
                &f(Category::LinkLocalReach, ANY_BINARY, "fe80::1", 8080, None),
                &f(Category::LinkLocalReach, CURL, "169.254.169.254", 80, None),
            ]
        );
        assert_eq!(all.len(), 2, "nothing credentialed: {all:?}");
    }

    #[test]
    fn link_local_reach_for_metadata_hostname_and_glob() {
        let p = policy(&[
            "a: {endpoints: [{host: metadata.google.internal, port: 80}], binaries: [{path: /usr/bin/curl}]}",
            "b: {endpoints: [{host: \"*.google.internal\", port: 80}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        let hosts: Vec<String> = of(
            &findings(&p, &CredentialSet::default()),
            Category::LinkLocalReach,
        )
        .into_iter()
        .map(|f| f.host.clone())
        .collect();
        assert_eq!(hosts, ["*.google.internal", "metadata.google.internal"]);
    }

    #[test]
    fn no_link_local_reach_for_ordinary_hosts() {
        let p = policy(&[
            "a: {endpoints: [{host: example.com, port: 80}, {host: 10.0.0.5, port: 80}, {port: 80, allowed_ips: [\"10.1.0.0/16\"]}]}",
        ]);
        assert!(of(&findings(&p, &github()), Category::LinkLocalReach).is_empty());
    }

    #[test]
    fn credential_reach_only_for_credentialed_host_and_port() {
        let p = policy(&[
            GITHUB_READ_CURL,
            "other: {endpoints: [{host: example.com, port: 443, protocol: rest, access: read-only}, {host: api.github.com, port: 8443}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        let all = findings(&p, &github());
        assert_eq!(
            of(&all, Category::CredentialReachExpansion),
            vec![&f(
                Category::CredentialReachExpansion,
                CURL,
                "api.github.com",
                443,
                None
            )]
        );
        assert!(findings(&p, &CredentialSet::default()).is_empty());
    }

    #[test]
    fn l7_bypass_for_opaque_binary_not_for_curl_on_inspected_endpoint() {
        let p = policy(&[
            GITHUB_READ_CURL,
            "git: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-only}], binaries: [{path: /usr/bin/git}]}",
        ]);
        assert_eq!(
            of(&findings(&p, &github()), Category::L7BypassCredentialed),
            vec![&f(
                Category::L7BypassCredentialed,
                GIT,
                "api.github.com",
                443,
                None
            )]
        );
    }

    #[test]
    fn opaque_binaries_match_on_basename_and_globs() {
        for b in [
            "/usr/bin/ssh",
            "/opt/x/nc",
            "/usr/lib/git-core/git-remote-https",
            "/usr/bin/*",
            "/**",
            ANY_BINARY,
        ] {
            assert!(is_l7_opaque_binary(b), "{b}");
        }
        for b in [
            "/usr/bin/curl",
            "/usr/bin/python3",
            "/usr/bin/gitk",
            "/sandbox/bin/py*",
        ] {
            assert!(!is_l7_opaque_binary(b), "{b}");
        }
    }

    #[test]
    fn any_binary_rule_counts_as_l7_opaque() {
        let p = policy(&[
            "gh: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-only}]}",
        ]);
        assert_eq!(
            of(&findings(&p, &github()), Category::L7BypassCredentialed),
            vec![&f(
                Category::L7BypassCredentialed,
                ANY_BINARY,
                "api.github.com",
                443,
                None
            )]
        );
    }

    #[test]
    fn l7_bypass_for_any_binary_on_uninspected_endpoints() {
        for endpoint in [
            "{host: api.github.com, port: 443}",
            "{host: api.github.com, port: 443, protocol: tcp}",
            "{host: api.github.com, port: 443, protocol: rest, tls: skip, access: read-only}",
            "{host: api.github.com, port: 443, protocol: rest, enforcement: audit, access: read-only}",
        ] {
            let p = policy(&[&format!(
                "gh: {{endpoints: [{endpoint}], binaries: [{{path: /usr/bin/curl}}]}}"
            )]);
            let all = findings(&p, &github());
            assert_eq!(
                of(&all, Category::L7BypassCredentialed),
                vec![&f(
                    Category::L7BypassCredentialed,
                    CURL,
                    "api.github.com",
                    443,
                    None
                )],
                "{endpoint}"
            );
            assert!(
                of(&all, Category::CapabilityExpansion).is_empty(),
                "{endpoint}: no methods"
            );
        }
    }

    #[test]
    fn capability_methods_come_from_effective_allow_rules() {
        let p = policy(&[GITHUB_READ_CURL]);
        let methods: Vec<Option<String>> =
            of(&findings(&p, &github()), Category::CapabilityExpansion)
                .into_iter()
                .map(|f| f.method.clone())
                .collect();
        assert_eq!(
            methods,
            [
                Some("GET".into()),
                Some("HEAD".into()),
                Some("OPTIONS".into())
            ]
        );

        let p = policy(&[
            "gh: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: full}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        assert_eq!(
            of(&findings(&p, &github()), Category::CapabilityExpansion),
            vec![&f(
                Category::CapabilityExpansion,
                CURL,
                "api.github.com",
                443,
                Some("*")
            )]
        );

        let p = policy(&[
            "gh: {endpoints: [{host: api.github.com, port: 443, protocol: rest, rules: [{allow: {method: post, path: /a}}, {allow: {method: POST, path: /b}}]}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        assert_eq!(
            of(&findings(&p, &github()), Category::CapabilityExpansion),
            vec![&f(
                Category::CapabilityExpansion,
                CURL,
                "api.github.com",
                443,
                Some("POST")
            )]
        );
    }

    #[test]
    fn wildcard_endpoint_facts_use_the_pattern_text() {
        let p = policy(&[
            "gh: {endpoints: [{host: \"*.github.com\", port: 443}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        let all = findings(&p, &github());
        assert!(all.contains(&f(
            Category::CredentialReachExpansion,
            CURL,
            "*.github.com",
            443,
            None
        )));
    }

    #[test]
    fn hostless_endpoints_are_keyed_by_their_ranges() {
        let p = policy(&[
            "db: {endpoints: [{port: 5432, allowed_ips: [\"10.20.0.0/16\"]}], binaries: [{path: /usr/bin/psql}]}",
        ]);
        let all = findings(&p, &creds(&[("10.20.1.2", &[])]));
        assert!(all.contains(&f(
            Category::CredentialReachExpansion,
            "/usr/bin/psql",
            "10.20.0.0/16",
            5432,
            None
        )));
        assert!(findings(&p, &creds(&[("10.30.1.2", &[])])).is_empty());
    }

    #[test]
    fn credential_coverage_works_both_ways() {
        let wildcard_cred = creds(&[("*.github.com", &[])]);
        assert!(wildcard_cred.covers("api.github.com", 443));
        assert!(wildcard_cred.covers("API.GitHub.com", 22));
        assert!(!wildcard_cred.covers("github.com", 443));
        assert!(!wildcard_cred.covers("a.b.github.com", 443));

        let exact_cred = creds(&[("api.github.com", &[443])]);
        assert!(exact_cred.covers("*.github.com", 443));
        assert!(exact_cred.covers("**.github.com", 443));
        assert!(
            !exact_cred.covers("*.github.com", 80),
            "port-bound credential"
        );
        assert!(!exact_cred.covers("*.gitlab.com", 443));
        assert!(!CredentialSet::default().covers("api.github.com", 443));
    }

    #[test]
    fn delta_ignores_findings_already_present() {
        let current = policy(&[GITHUB_READ_CURL]);
        let candidate = policy(&[
            GITHUB_READ_CURL,
            "pypi: {endpoints: [{host: pypi.org, port: 443, protocol: rest, access: read-only}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        assert!(new_findings(&current, &candidate, &github()).is_empty());
        assert!(new_findings(&current, &current, &github()).is_empty());
    }

    #[test]
    fn delta_ignores_rule_renames() {
        let current = policy(&[GITHUB_READ_CURL]);
        let candidate = policy(&[&GITHUB_READ_CURL.replacen("gh:", "renamed:", 1)]);
        assert!(new_findings(&current, &candidate, &github()).is_empty());
    }

    #[test]
    fn delta_reports_a_new_method_on_existing_reach() {
        let current = policy(&[GITHUB_READ_CURL]);
        let candidate = policy(&[
            GITHUB_READ_CURL,
            "gh_post: {endpoints: [{host: api.github.com, port: 443, protocol: rest, rules: [{allow: {method: POST, path: /repos/*/issues}}]}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        assert_eq!(
            new_findings(&current, &candidate, &github()),
            vec![f(
                Category::CapabilityExpansion,
                CURL,
                "api.github.com",
                443,
                Some("POST")
            )]
        );
    }

    #[test]
    fn capability_is_suppressed_when_the_reach_itself_is_new() {
        let current = Policy::deny_all();
        let candidate = policy(&[GITHUB_READ_CURL]);
        assert_eq!(
            new_findings(&current, &candidate, &github()),
            vec![f(
                Category::CredentialReachExpansion,
                CURL,
                "api.github.com",
                443,
                None
            )]
        );
    }

    #[test]
    fn delta_treats_subsumed_findings_as_old() {
        let current = policy(&[
            "gh: {endpoints: [{host: \"*.github.com\", port: 443, protocol: rest, access: full}]}",
        ]);
        let candidate = policy(&[
            "gh: {endpoints: [{host: \"*.github.com\", port: 443, protocol: rest, access: full}]}",
            "gh2: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-write}], binaries: [{path: /usr/bin/git}]}",
        ]);
        assert!(new_findings(&current, &candidate, &github()).is_empty());
    }

    #[test]
    fn delta_reports_new_link_local_reach_and_bypass() {
        let current = policy(&[GITHUB_READ_CURL]);
        let candidate = policy(&[
            GITHUB_READ_CURL,
            "git: {endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-only}], binaries: [{path: /usr/bin/git}]}",
            "meta: {endpoints: [{host: 169.254.169.254, port: 80}], binaries: [{path: /usr/bin/curl}]}",
        ]);
        assert_eq!(
            new_findings(&current, &candidate, &github()),
            vec![
                f(Category::LinkLocalReach, CURL, "169.254.169.254", 80, None),
                f(
                    Category::L7BypassCredentialed,
                    GIT,
                    "api.github.com",
                    443,
                    None
                ),
                f(
                    Category::CredentialReachExpansion,
                    GIT,
                    "api.github.com",
                    443,
                    None
                ),
            ]
        );
    }

    #[test]
    fn grammar_for_no_findings() {
        assert_eq!(validation_result(&[]), "prover: no new findings");
        assert_eq!(validation_result(&[]), NO_NEW_FINDINGS);
    }

    #[test]
    fn grammar_for_one_finding() {
        let one = [f(
            Category::CredentialReachExpansion,
            CURL,
            "api.github.com",
            443,
            None,
        )];
        assert_eq!(
            validation_result(&one),
            "prover: 1 new finding\n  credential_reach_expansion: api.github.com:443 via /usr/bin/curl"
        );
    }

    #[test]
    fn grammar_for_two_findings() {
        let two = [
            f(
                Category::L7BypassCredentialed,
                ANY_BINARY,
                "api.github.com",
                443,
                None,
            ),
            f(
                Category::CapabilityExpansion,
                CURL,
                "api.github.com",
                443,
                Some("POST"),
            ),
        ];
        assert_eq!(
            validation_result(&two),
            "prover: 2 new findings\n  l7_bypass_credentialed: api.github.com:443 via *\n  capability_expansion: POST on api.github.com:443 via /usr/bin/curl"
        );
    }

    #[test]
    fn grammar_brackets_ipv6_hosts() {
        let one = [f(Category::LinkLocalReach, CURL, "fe80::1", 80, None)];
        assert_eq!(
            validation_result(&one),
            "prover: 1 new finding\n  link_local_reach: [fe80::1]:80 via /usr/bin/curl"
        );
    }

    #[test]
    fn category_names() {
        let names: Vec<&str> = [
            Category::LinkLocalReach,
            Category::L7BypassCredentialed,
            Category::CredentialReachExpansion,
            Category::CapabilityExpansion,
        ]
        .iter()
        .map(|c| c.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "link_local_reach",
                "l7_bypass_credentialed",
                "credential_reach_expansion",
                "capability_expansion"
            ]
        );
    }

    /// The single note of a one-binary rule with this endpoint.
    fn notes_for(endpoint: &str) -> Vec<String> {
        security_notes(&rule(&format!(
            "{{endpoints: [{endpoint}], binaries: [{{path: /usr/bin/curl}}]}}"
        )))
    }

    fn assert_one_note(endpoint: &str, needles: &[&str]) {
        let notes = notes_for(endpoint);
        assert_eq!(notes.len(), 1, "{endpoint}: {notes:?}");
        for needle in needles {
            assert!(
                notes[0].contains(needle),
                "{endpoint}: {notes:?} lacks {needle}"
            );
        }
    }

    #[test]
    fn no_notes_for_a_narrow_l7_rule() {
        let notes = notes_for(
            "{host: api.github.com, port: 443, protocol: rest, rules: [{allow: {method: GET, path: \"/repos/**\"}}]}",
        );
        assert_eq!(notes, Vec::<String>::new());
        assert!(
            notes_for("{host: api.github.com, port: 443, protocol: rest, access: read-only}")
                .is_empty()
        );
    }

    #[test]
    fn note_allow_uninspected_credentials() {
        assert_one_note(
            "{host: api.github.com, port: 443, allow_uninspected_credentials: true}",
            &[
                "`allow_uninspected_credentials`",
                "`api.github.com:443`",
                "does not inspect",
            ],
        );
    }

    #[test]
    fn note_internal_ip_host_but_not_public_or_always_blocked() {
        assert_one_note(
            "{host: 10.0.0.5, port: 443}",
            &["`10.0.0.5`", "internal IP"],
        );
        assert_one_note(
            "{host: \"fd00::5\", port: 443}",
            &["`fd00::5`", "internal IP"],
        );
        assert!(notes_for("{host: 8.8.8.8, port: 443}").is_empty());
        assert!(notes_for("{host: 169.254.169.254, port: 443}").is_empty());
        assert!(notes_for("{host: 127.0.0.1, port: 443}").is_empty());
    }

    #[test]
    fn note_wildcard_host() {
        assert_one_note(
            "{host: \"*.github.com\", port: 443}",
            &["`*.github.com`", "wildcard"],
        );
    }

    #[test]
    fn note_internal_allowed_ips_but_not_public() {
        assert_one_note(
            "{host: db.example.com, port: 443, allowed_ips: [\"192.168.1.0/24\"]}",
            &["`192.168.1.0/24`", "internal"],
        );
        assert_one_note(
            "{host: db.example.com, port: 443, allowed_ips: [\"8.0.0.0/6\"]}",
            &["`8.0.0.0/6`"],
        );
        assert!(
            notes_for("{host: db.example.com, port: 443, allowed_ips: [\"8.8.8.0/24\"]}")
                .is_empty()
        );
    }

    #[test]
    fn note_hostless_allowed_ips() {
        assert_one_note(
            "{port: 443, allowed_ips: [\"8.8.8.0/24\"]}",
            &["`allowed_ips` (8.8.8.0/24)", "no host"],
        );
        let notes = notes_for("{port: 443, allowed_ips: [\"10.1.0.0/16\"]}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("includes private or internal"),
            "{notes:?}"
        );
        assert!(notes[1].contains("no host"), "{notes:?}");
    }

    #[test]
    fn note_ephemeral_port() {
        assert_one_note(
            "{host: api.example.com, port: 50000}",
            &["Port 50000", "49152"],
        );
        assert!(notes_for("{host: api.example.com, port: 49152}").is_empty());
    }

    #[test]
    fn note_data_store_ports() {
        for (port, service) in [
            (5432, "PostgreSQL"),
            (3306, "MySQL"),
            (6379, "Redis"),
            (27017, "MongoDB"),
            (9200, "Elasticsearch"),
            (11211, "memcached"),
            (5672, "AMQP"),
        ] {
            assert_one_note(
                &format!("{{host: db.example.com, port: {port}}}"),
                &[&format!("Port {port}"), service],
            );
        }
    }

    #[test]
    fn note_rule_without_binaries() {
        let notes = security_notes(&rule(
            "{endpoints: [{host: api.github.com, port: 443, protocol: rest, access: read-only}]}",
        ));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("any process in the sandbox would get this access"),
            "{notes:?}"
        );
    }

    #[test]
    fn note_every_method_on_every_path() {
        assert_one_note(
            "{host: api.github.com, port: 443, protocol: rest, access: full}",
            &["`api.github.com:443`", "every method on every path"],
        );
        assert_one_note(
            "{host: api.github.com, port: 443, protocol: rest, rules: [{allow: {method: \"*\", path: \"**\"}}]}",
            &["every method on every path"],
        );
        assert!(notes_for("{host: api.github.com, port: 443, protocol: rest, rules: [{allow: {method: \"*\", path: \"/v1/**\"}}]}").is_empty());
    }

    #[test]
    fn notes_are_ordered_by_kind_and_deduplicated() {
        let notes = security_notes(&rule(
            "{endpoints: [{host: \"*.example.com\", ports: [6379, 50000], protocol: rest, access: full}, {host: \"*.example.com\", port: 443, allow_uninspected_credentials: true}]}",
        ));
        let firsts: Vec<&str> = notes
            .iter()
            .map(|n| n.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            firsts,
            [
                "`allow_uninspected_credentials`",
                "Host",
                "Port",
                "Port",
                "The",
                "The"
            ],
            "{notes:?}"
        );
        assert!(
            notes[2].contains("50000") && notes[3].contains("6379"),
            "{notes:?}"
        );
        assert!(
            notes[4].contains("no binaries") && notes[5].contains("every method"),
            "{notes:?}"
        );
    }
}
