//! Provider profiles (reference §6.1–6.2; contract §1 "Providers"): what a
//! provider of each type carries, where its credentials may be sent, and
//! the `_provider_<name>` rule each attached provider adds to the
//! effective policy.
//!
//! The built-in profiles are the YAML files in `agent/profiles/`, compiled
//! in. Every endpoint of a profile is where an attached provider's
//! credentials get injected, so each must be L7-inspected, enforced and
//! bound to a host (checked when the profile loads; tests load them all).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::policy::{PROVIDER_RULE_PREFIX, Policy, PolicyError, Rule};

/// The built-in profiles: (file name, text). The file stem is the id.
const BUILTIN_SOURCES: &[(&str, &str)] = &[
    ("generic.yaml", include_str!("../../profiles/generic.yaml")),
    ("github.yaml", include_str!("../../profiles/github.yaml")),
    ("gitlab.yaml", include_str!("../../profiles/gitlab.yaml")),
];

/// At most this many providers per sandbox (OpenShell's limit).
pub const MAX_ATTACHED: usize = 32;

/// Names the composed document in policy errors.
const COMPOSED_SOURCE: &str = "effective policy";

/// The longest profile id (OpenShell's limit on a provider type).
const MAX_ID_LEN: usize = 64;

/// A provider type: its credentials, endpoints and binaries. Modelled on
/// OpenShell's `ProviderProfile`, smaller.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The provider type users give, e.g. `github`.
    pub id: String,
    pub display_name: String,
    pub description: String,
    /// The keys a provider of this type carries. Empty: any key.
    #[serde(default)]
    pub credentials: Vec<CredentialSpec>,
    /// Policy endpoint objects, the same keys as in policy YAML.
    #[serde(default)]
    pub endpoints: Vec<Json>,
    /// Executable paths or globs allowed to use the endpoints.
    #[serde(default)]
    pub binaries: Vec<String>,
}

/// One credential of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub name: String,
    /// The keys accepted for this credential, e.g. `GITHUB_TOKEN`, `GH_TOKEN`.
    pub env_vars: Vec<String>,
    pub auth_style: AuthStyle,
}

/// How the service expects the credential (informational for now: the
/// placeholder is resolved wherever it appears in headers, path or query).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthStyle {
    Bearer,
    Basic,
    Header,
    Query,
    Path,
}

/// One attached provider, as composition needs it (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached<'a> {
    pub name: &'a str,
    pub provider_type: &'a str,
    pub credential_keys: Vec<&'a str>,
}

/// A host pattern (lowercase, as the policy parser normalised it) and its
/// sorted ports: where a credential may be sent.
pub type HostPorts = (String, Vec<u16>);

/// A profile that parsed and validated, with where its credentials go.
#[derive(Debug)]
struct Loaded {
    profile: Profile,
    endpoint_hosts: Vec<HostPorts>,
}

#[derive(Default)]
struct Builtins {
    profiles: Vec<Profile>,
    /// By profile id.
    endpoint_hosts: BTreeMap<String, Vec<HostPorts>>,
}

fn builtins() -> &'static Builtins {
    static BUILTINS: OnceLock<Builtins> = OnceLock::new();
    BUILTINS.get_or_init(|| {
        let mut b = Builtins::default();
        for (file, text) in BUILTIN_SOURCES {
            match load_profile(file, text) {
                Ok(l) if b.endpoint_hosts.contains_key(&l.profile.id) => {
                    log::error!("profile {file}: id `{}` is used twice", l.profile.id);
                }
                Ok(l) => {
                    b.endpoint_hosts
                        .insert(l.profile.id.clone(), l.endpoint_hosts);
                    b.profiles.push(l.profile);
                }
                // A broken built-in is a build-time bug (the tests load
                // every one). At run time its type is unknown, so
                // attaching it is refused: fail closed.
                Err(e) => log::error!("{e}"),
            }
        }
        b
    })
}

/// The built-in profiles, parsed and validated once.
pub fn builtin() -> &'static [Profile] {
    &builtins().profiles
}

pub fn find(id: &str) -> Option<&'static Profile> {
    builtin().iter().find(|p| p.id == id)
}

/// Provider types a user may give: the profile ids. The error lists them.
pub fn validate_type(t: &str) -> Result<(), String> {
    if find(t).is_some() {
        return Ok(());
    }
    Err(format!(
        "unknown provider type `{t}`; use one of: {}",
        type_list()
    ))
}

/// The profile ids, sorted, comma-separated.
fn type_list() -> String {
    let mut ids: Vec<&str> = builtin().iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    ids.join(", ")
}

/// Where a type's credentials may be sent; nowhere for an unknown type.
fn endpoint_hosts(provider_type: &str) -> &'static [HostPorts] {
    builtins()
        .endpoint_hosts
        .get(provider_type)
        .map_or(&[], Vec::as_slice)
}

/// Parses and validates one profile file.
fn load_profile(file: &str, text: &str) -> Result<Loaded, String> {
    let profile: Profile =
        serde_yaml::from_str(text).map_err(|e| format!("profile {file}: {e}"))?;
    check_fields(&profile, file).map_err(|e| format!("profile {file}: {e}"))?;
    let endpoint_hosts = if profile.endpoints.is_empty() {
        Vec::new()
    } else {
        let rule = compile_rule(&profile)?;
        check_endpoints(&rule).map_err(|e| format!("profile {file}: {e}"))?;
        rule.endpoints
            .iter()
            .map(|e| (e.summary.host_pattern.clone(), e.summary.ports.clone()))
            .collect()
    };
    Ok(Loaded {
        profile,
        endpoint_hosts,
    })
}

/// The checks serde cannot express: names, keys, and binaries that
/// would mean nothing.
fn check_fields(p: &Profile, file: &str) -> Result<(), String> {
    let id_ok = !p.id.is_empty()
        && p.id.len() <= MAX_ID_LEN
        && p.id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !id_ok {
        return Err(format!(
            "id `{}` must be 1-{MAX_ID_LEN} lower-case letters, digits or `-`",
            p.id
        ));
    }
    // One id, one file: the file list is the type list reviewers see.
    if file.strip_suffix(".yaml") != Some(p.id.as_str()) {
        return Err(format!(
            "id `{}` must match the file name; rename one",
            p.id
        ));
    }
    if p.display_name.trim().is_empty() || p.description.trim().is_empty() {
        return Err("`display_name` and `description` must not be empty".into());
    }
    let mut keys = BTreeSet::new();
    for (i, c) in p.credentials.iter().enumerate() {
        if c.name.trim().is_empty() {
            return Err(format!(
                "credentials[{i}].name is empty; name the credential"
            ));
        }
        if c.env_vars.is_empty() {
            return Err(format!(
                "credentials[{i}].env_vars is empty; list the keys that carry `{}`",
                c.name
            ));
        }
        for key in &c.env_vars {
            if !is_env_key(key) {
                return Err(format!(
                    "credentials[{i}].env_vars: `{key}` is not an environment variable name (letters, digits, `_`, not starting with a digit)"
                ));
            }
            if !keys.insert(key.as_str()) {
                return Err(format!(
                    "credentials[{i}].env_vars: `{key}` is listed twice; a key belongs to one credential"
                ));
            }
        }
    }
    // Binaries scope endpoints; without endpoints they would grant nothing
    // and only mislead a reader.
    if p.endpoints.is_empty() && !p.binaries.is_empty() {
        return Err("`binaries` without `endpoints` grant nothing; remove them".into());
    }
    Ok(())
}

fn is_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The profile's endpoints and binaries as a rule, validated by the
/// policy parser itself so a profile accepts exactly what a policy does.
fn compile_rule(p: &Profile) -> Result<Rule, String> {
    let key = format!("{PROVIDER_RULE_PREFIX}{}", sanitize(&p.id));
    let doc = json!({ "version": 1, "network_policies": { key.as_str(): rule_json(p) } });
    let policy = Policy::parse_composed(
        &format!("profile {}", p.id),
        &crate::policy::document_text(&doc),
    )
    .map_err(|e| e.to_string())?;
    policy
        .rule(&key)
        .cloned()
        .ok_or_else(|| format!("profile {}: the compiled rule `{key}` is missing", p.id))
}

/// Every profile endpoint is where the attached provider's credentials are
/// injected (an empty `credentials` list means any key, not none), so it
/// must be inspected and enforced, and named by host alone: bindings are
/// host and ports, and a path scope would bind wider than the endpoint.
fn check_endpoints(rule: &Rule) -> Result<(), String> {
    for (i, e) in rule.endpoints.iter().enumerate() {
        let s = &e.summary;
        let at = format!("endpoints[{i}] ({}:{:?})", s.host_pattern, s.ports);
        if e.l7.is_none() || s.tls_skip || s.allow_uninspected_credentials {
            return Err(format!(
                "{at} receives credentials, so it must be L7-inspected: set `protocol: rest` and remove `tls: skip` and `allow_uninspected_credentials`"
            ));
        }
        if s.enforcement_audit {
            return Err(format!(
                "{at} receives credentials, so it must enforce its rules; remove `enforcement: audit`"
            ));
        }
        if s.host_pattern.is_empty() || s.host_is_ip_literal {
            return Err(format!(
                "{at} needs a DNS host name: credentials are bound to hosts"
            ));
        }
        if e.path.is_some() {
            return Err(format!(
                "{at} has a `path` scope, but credentials are bound to a host and ports; remove `path` and use `rules`"
            ));
        }
    }
    Ok(())
}

/// The rule a profile contributes: its endpoints and binaries. `name` is
/// left out, so it defaults to the rule key.
fn rule_json(p: &Profile) -> Json {
    json!({
        "endpoints": p.endpoints,
        "binaries": p.binaries.iter().map(|b| json!({ "path": b })).collect::<Vec<_>>(),
    })
}

/// Lower-case ASCII letters and digits kept; everything else `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `_provider_<sanitized name>`: lower-case, non-alphanumeric -> `_`. A key
/// already in `taken` gets `_2`, `_3`, ... (the first free one).
pub fn rule_key(name: &str, taken: &BTreeSet<String>) -> String {
    let base = format!("{PROVIDER_RULE_PREFIX}{}", sanitize(name));
    if !taken.contains(&base) {
        return base;
    }
    // `taken` is finite, so a free suffix exists.
    (2u64..)
        .map(|n| format!("{base}_{n}"))
        .find(|k| !taken.contains(k))
        .unwrap_or(base)
}

/// The rule key of each attached provider whose profile has endpoints, in
/// attachment order; collisions are resolved in that order. Providers
/// without endpoints (generic) get no rule and take no key.
pub fn provider_rule_keys<'a>(attached: &[Attached<'a>]) -> Result<Vec<(&'a str, String)>, String> {
    Ok(provider_rules(attached)?
        .into_iter()
        .map(|(name, key, _)| (name, key))
        .collect())
}

/// [`provider_rule_keys`] with each provider's profile.
fn provider_rules<'a>(
    attached: &[Attached<'a>],
) -> Result<Vec<(&'a str, String, &'static Profile)>, String> {
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    for a in attached {
        let profile = profile_of(a)?;
        if profile.endpoints.is_empty() {
            continue;
        }
        let key = rule_key(a.name, &taken);
        taken.insert(key.clone());
        out.push((a.name, key, profile));
    }
    Ok(out)
}

fn profile_of(a: &Attached<'_>) -> Result<&'static Profile, String> {
    find(a.provider_type).ok_or_else(|| {
        format!(
            "provider `{}`: unknown provider type `{}`; use one of: {}",
            a.name,
            a.provider_type,
            type_list()
        )
    })
}

/// Refuses an attachment set OpenShell refuses: too many providers, empty
/// or repeated names, unknown types, and a credential key carried twice
/// (a placeholder must resolve to exactly one provider's secret).
pub fn check_attachment(attached: &[Attached<'_>]) -> Result<(), String> {
    if attached.len() > MAX_ATTACHED {
        return Err(format!(
            "{} providers are attached; at most {MAX_ATTACHED} are allowed, so detach some",
            attached.len()
        ));
    }
    let mut names = BTreeSet::new();
    let mut key_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for a in attached {
        if a.name.trim().is_empty() || a.name.chars().any(char::is_control) {
            return Err(format!(
                "provider name `{}` is empty or has control characters; name the provider",
                a.name.escape_debug()
            ));
        }
        if !names.insert(a.name) {
            return Err(format!(
                "provider `{}` is attached twice; attach it once",
                a.name
            ));
        }
        profile_of(a)?;
        for key in &a.credential_keys {
            if let Some(owner) = key_owner.insert(key, a.name) {
                return Err(format!(
                    "credential key `{key}` is carried by provider `{owner}` and provider `{}`; a placeholder must name one secret, so remove the key from one of them",
                    a.name
                ));
            }
        }
    }
    Ok(())
}

/// The effective policy: the base (user) policy plus one `_provider_<name>`
/// rule per attached provider whose profile has endpoints, holding the
/// profile's endpoints and binaries. Rules are added beside the user's,
/// never merged into them, so detaching removes exactly what attaching
/// added. Error text names the provider.
pub fn compose(base: &Policy, attached: &[Attached<'_>]) -> Result<Policy, String> {
    check_attachment(attached)?;
    // Composing an effective policy again would stack provider rules.
    if let Some(r) = base
        .rules()
        .iter()
        .find(|r| r.key.starts_with(PROVIDER_RULE_PREFIX))
    {
        return Err(format!(
            "the base policy already has the provider rule `{}`; compose from the user policy, not an effective one",
            r.key
        ));
    }
    let provider_rules = provider_rules(attached)?;
    let mut doc = base.canonical_json();
    let mut rules = take_rules(&mut doc);
    for (_, key, profile) in &provider_rules {
        rules.insert(key.clone(), rule_json(profile));
    }
    if let Json::Object(top) = &mut doc {
        top.insert("network_policies".into(), Json::Object(rules));
    }
    Policy::parse_composed(COMPOSED_SOURCE, &crate::policy::document_text(&doc))
        .map_err(|e| blame(&e, &provider_rules))
}

/// Removes and returns the document's `network_policies` map.
fn take_rules(doc: &mut Json) -> Map<String, Json> {
    match doc
        .as_object_mut()
        .and_then(|top| top.remove("network_policies"))
    {
        Some(Json::Object(rules)) => rules,
        _ => Map::new(),
    }
}

/// Names the provider whose rule an error points into, if any.
fn blame(e: &PolicyError, rules: &[(&str, String, &Profile)]) -> String {
    let owner = rules.iter().find(|(_, key, _)| {
        let at = format!("network_policies.{key}");
        e.yaml_path == at || e.yaml_path.starts_with(&format!("{at}."))
    });
    match owner {
        Some((name, _, _)) => format!("provider `{name}`: {e}"),
        None => e.to_string(),
    }
}

/// Where each credential key of the attached providers may be sent:
/// (key, provider name, host patterns with their ports), in attachment
/// order. A key of a provider whose profile has no endpoints (generic),
/// or of an unknown type, is bound nowhere: it never resolves.
pub fn bindings(attached: &[Attached<'_>]) -> Vec<(String, String, Vec<HostPorts>)> {
    attached
        .iter()
        .flat_map(|a| {
            let hosts = endpoint_hosts(a.provider_type);
            a.credential_keys
                .iter()
                .map(move |key| (key.to_string(), a.name.to_string(), hosts.to_vec()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;

    use super::*;
    use crate::policy::{L4Decision, L4Request};

    const USER: &str = r#"
version: 1
landlock:
  compatibility: best_effort
network_policies:
  pypi:
    endpoints:
      - { host: pypi.org, port: 443, protocol: rest, access: read-only }
    binaries:
      - path: /usr/bin/pip3
  github_public:
    endpoints:
      - { host: api.github.com, port: 443 }
    binaries:
      - path: /usr/bin/python3
"#;

    fn attached<'a>(name: &'a str, t: &'a str, keys: &[&'a str]) -> Attached<'a> {
        Attached {
            name,
            provider_type: t,
            credential_keys: keys.to_vec(),
        }
    }

    fn empty() -> Policy {
        Policy::parse("t.yaml", "version: 1\n").unwrap()
    }

    fn connect(p: &Policy, host: &str, port: u16, bin: &str) -> L4Decision {
        let names = vec![host.to_string()];
        let bins = [Path::new(bin)];
        p.evaluate_l4(&L4Request {
            hostnames: &names,
            ip: IpAddr::V4(Ipv4Addr::new(140, 82, 112, 6)),
            port,
            binaries: &bins,
        })
    }

    fn allowed_by(d: &L4Decision) -> Option<&str> {
        match d {
            L4Decision::Allow(a) => Some(&a.rule),
            L4Decision::Deny { .. } => None,
        }
    }

    fn load_err(file: &str, text: &str) -> String {
        load_profile(file, text).unwrap_err()
    }

    const MINIMAL: &str = "id: demo\ndisplay_name: Demo\ndescription: d\ncredentials:\n  - {name: T, env_vars: [T], auth_style: bearer}\nbinaries: [/usr/bin/curl]\nendpoints:\n";

    #[test]
    fn every_builtin_source_loads() {
        for (file, text) in BUILTIN_SOURCES {
            let l = load_profile(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{}.yaml", l.profile.id), *file);
        }
        assert_eq!(builtin().len(), BUILTIN_SOURCES.len());
        let ids: BTreeSet<&str> = builtin().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), builtin().len(), "ids are unique");
        assert_eq!(find("github").unwrap().display_name, "GitHub");
        assert!(find("GitHub").is_none());
    }

    #[test]
    fn every_builtin_composes_alone_with_an_empty_base() {
        for p in builtin() {
            let keys = if p.credentials.is_empty() {
                vec![]
            } else {
                vec![p.credentials[0].env_vars[0].as_str()]
            };
            let eff = compose(&empty(), &[attached("x", &p.id, &keys)])
                .unwrap_or_else(|e| panic!("{}: {e}", p.id));
            assert_eq!(eff.rule_count(), usize::from(!p.endpoints.is_empty()));
        }
    }

    #[test]
    fn credential_declaring_profiles_have_only_inspected_endpoints() {
        for p in builtin().iter().filter(|p| !p.credentials.is_empty()) {
            assert!(!p.endpoints.is_empty(), "{}", p.id);
            let rule = compile_rule(p).unwrap();
            for e in &rule.endpoints {
                assert!(e.l7.is_some(), "{}: {:?}", p.id, e.summary);
                assert_eq!(e.summary.protocol, "rest");
                assert!(!e.summary.tls_skip);
                assert!(!e.summary.enforcement_audit);
            }
        }
    }

    #[test]
    fn github_and_gitlab_binaries() {
        for (id, cli) in [("github", "/usr/bin/gh"), ("gitlab", "/usr/bin/glab")] {
            let bins = &find(id).unwrap().binaries;
            for b in ["/usr/bin/curl", "/usr/bin/git", cli, "/usr/bin/node"] {
                assert!(bins.iter().any(|x| x == b), "{id} lacks {b}");
            }
        }
    }

    #[test]
    fn github_hosts_leave_out_public_content() {
        assert_eq!(
            endpoint_hosts("github"),
            [
                ("api.github.com".to_string(), vec![443]),
                ("github.com".to_string(), vec![443]),
                ("uploads.github.com".to_string(), vec![443]),
            ]
        );
        assert_eq!(endpoint_hosts("gitlab"), [("gitlab.com".into(), vec![443])]);
        assert!(endpoint_hosts("generic").is_empty());
    }

    #[test]
    fn profiles_with_uninspected_or_odd_endpoints_are_refused() {
        for (endpoint, needle) in [
            ("  - {host: a.example.com, port: 443}", "L7-inspected"),
            (
                "  - {host: a.example.com, port: 443, protocol: rest, access: full, tls: skip}",
                "L7-inspected",
            ),
            (
                "  - {host: a.example.com, port: 443, protocol: rest, access: full, enforcement: audit}",
                "enforce",
            ),
            (
                "  - {host: a.example.com, port: 443, protocol: rest, access: full, path: /v1/**}",
                "`path` scope",
            ),
            (
                "  - {host: 192.0.2.1, port: 443, protocol: rest, access: full}",
                "DNS host name",
            ),
            ("  - {host: a.example.com, port: 0}", "out of range"),
        ] {
            let e = load_err("demo.yaml", &format!("{MINIMAL}{endpoint}\n"));
            assert!(e.contains(needle), "{endpoint}: {e}");
            assert!(e.starts_with("profile"), "{e}");
        }
    }

    #[test]
    fn profile_fields_are_checked() {
        let ok = format!(
            "{MINIMAL}  - {{host: a.example.com, port: 443, protocol: rest, access: full}}\n"
        );
        assert!(load_profile("demo.yaml", &ok).is_ok());
        assert!(load_err("other.yaml", &ok).contains("must match the file name"));
        assert!(load_err("demo.yaml", &format!("{ok}extra: 1\n")).contains("unknown field"));
        assert!(load_err("demo.yaml", &ok.replace("bearer", "cookie")).contains("unknown variant"));
        assert!(load_err("demo.yaml", &ok.replace("[T]", "[T, T]")).contains("listed twice"));
        assert!(load_err("demo.yaml", &ok.replace("[T]", "[1T]")).contains("environment variable"));
        assert!(load_err("demo.yaml", &ok.replace("[T]", "[]")).contains("env_vars is empty"));
        assert!(load_err("Demo.yaml", &ok.replace("id: demo", "id: Demo")).contains("lower-case"));
        let bins_only = "id: demo\ndisplay_name: D\ndescription: d\nbinaries: [/usr/bin/curl]\n";
        assert!(load_err("demo.yaml", bins_only).contains("grant nothing"));
    }

    #[test]
    fn rule_keys_are_sanitised() {
        let none = BTreeSet::new();
        assert_eq!(rule_key("github", &none), "_provider_github");
        assert_eq!(rule_key("My-GH.work", &none), "_provider_my_gh_work");
        assert_eq!(rule_key("ü x", &none), "_provider___x");
    }

    #[test]
    fn rule_key_collisions_count_up() {
        let mut taken = BTreeSet::new();
        let mut keys = Vec::new();
        for name in ["my-gh", "My GH", "my_gh", "my_gh_2"] {
            let k = rule_key(name, &taken);
            taken.insert(k.clone());
            keys.push(k);
        }
        assert_eq!(
            keys,
            [
                "_provider_my_gh",
                "_provider_my_gh_2",
                "_provider_my_gh_3",
                "_provider_my_gh_2_2"
            ]
        );
    }

    #[test]
    fn compose_keeps_user_rules_and_adds_the_provider_rule() {
        let base = Policy::parse("t.yaml", USER).unwrap();
        let eff = compose(&base, &[attached("github", "github", &["GITHUB_TOKEN"])]).unwrap();
        let (b, e) = (base.canonical_json(), eff.canonical_json());
        for (k, v) in b.as_object().unwrap() {
            if k == "network_policies" {
                for (rk, rv) in v.as_object().unwrap() {
                    assert_eq!(&e["network_policies"][rk], rv, "{rk}");
                }
            } else {
                assert_eq!(&e[k], v, "{k}");
            }
        }
        assert_eq!(eff.rule_count(), base.rule_count() + 1);
        let rule = eff.rule("_provider_github").unwrap();
        let hosts: Vec<&str> = rule
            .endpoints
            .iter()
            .map(|e| e.summary.host_pattern.as_str())
            .collect();
        assert_eq!(
            hosts,
            ["api.github.com", "github.com", "uploads.github.com"]
        );
        assert_eq!(rule.binaries, find("github").unwrap().binaries);
        assert_eq!(rule.name, "_provider_github");
    }

    #[test]
    fn composed_policy_admits_the_provider_binaries_only() {
        let eff = compose(&empty(), &[attached("github", "github", &["GH_TOKEN"])]).unwrap();
        let d = connect(&eff, "api.github.com", 443, "/usr/bin/curl");
        assert_eq!(allowed_by(&d), Some("_provider_github"), "{d:?}");
        let L4Decision::Allow(a) = d else {
            unreachable!()
        };
        assert_eq!(a.endpoint.protocol, "rest");
        assert_eq!(
            allowed_by(&connect(&eff, "api.github.com", 80, "/usr/bin/curl")),
            None
        );
        assert_eq!(
            allowed_by(&connect(&eff, "api.github.com", 443, "/usr/bin/wget")),
            None
        );
        assert_eq!(
            allowed_by(&connect(
                &eff,
                "raw.githubusercontent.com",
                443,
                "/usr/bin/curl"
            )),
            None
        );
    }

    #[test]
    fn colliding_provider_names_get_numbered_rules() {
        let eff = compose(
            &empty(),
            &[
                attached("my-gh", "github", &["GITHUB_TOKEN"]),
                attached("My GH", "github", &["GH_TOKEN"]),
            ],
        )
        .unwrap();
        assert!(eff.rule("_provider_my_gh").is_some());
        assert!(eff.rule("_provider_my_gh_2").is_some());
    }

    #[test]
    fn generic_contributes_no_rule_and_binds_nothing() {
        let base = Policy::parse("t.yaml", USER).unwrap();
        let gen_ = [attached("misc", "generic", &["API_KEY"])];
        let eff = compose(&base, &gen_).unwrap();
        assert_eq!(eff.canonical_json(), base.canonical_json());
        assert_eq!(eff.hash(), base.hash());
        assert_eq!(
            bindings(&gen_),
            [("API_KEY".to_string(), "misc".to_string(), vec![])]
        );
        // A generic provider takes no key, so a later one keeps its name.
        let keys = provider_rule_keys(&[
            attached("gh", "generic", &[]),
            attached("gh2", "github", &[]),
        ])
        .unwrap();
        assert_eq!(keys, [("gh2", "_provider_gh2".to_string())]);
    }

    #[test]
    fn validate_type_lists_the_types() {
        assert!(validate_type("github").is_ok());
        assert!(validate_type("generic").is_ok());
        let e = validate_type("bitbucket").unwrap_err();
        assert_eq!(
            e,
            "unknown provider type `bitbucket`; use one of: generic, github, gitlab"
        );
    }

    #[test]
    fn user_policies_still_may_not_use_the_provider_prefix() {
        let doc = "version: 1\nnetwork_policies:\n  _provider_x:\n    endpoints: [{host: a.example.com, port: 443}]\n";
        let e = Policy::parse("t.yaml", doc).unwrap_err();
        assert_eq!(e.yaml_path, "network_policies._provider_x");
        assert!(e.problem.contains("reserved"), "{e}");
        let composed = Policy::parse_composed("t", doc).unwrap();
        assert!(composed.rule("_provider_x").is_some());
        // And an effective policy cannot be composed again.
        let e = compose(&composed, &[]).unwrap_err();
        assert!(
            e.contains("already has the provider rule `_provider_x`"),
            "{e}"
        );
    }

    #[test]
    fn bad_attachments_name_the_provider() {
        let e = compose(&empty(), &[attached("work", "bitbucket", &[])]).unwrap_err();
        assert!(
            e.starts_with("provider `work`: unknown provider type `bitbucket`"),
            "{e}"
        );
        assert!(e.contains("generic, github, gitlab"), "{e}");
        let e = compose(
            &empty(),
            &[attached("a", "github", &[]), attached("a", "gitlab", &[])],
        )
        .unwrap_err();
        assert!(e.contains("provider `a` is attached twice"), "{e}");
        let e = compose(
            &empty(),
            &[
                attached("a", "github", &["TOKEN"]),
                attached("b", "generic", &["TOKEN"]),
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("`TOKEN` is carried by provider `a` and provider `b`"),
            "{e}"
        );
        let names: Vec<String> = (0..=MAX_ATTACHED).map(|i| format!("p{i}")).collect();
        let many: Vec<Attached<'_>> = names.iter().map(|n| attached(n, "generic", &[])).collect();
        assert!(compose(&empty(), &many).unwrap_err().contains("at most 32"));
        assert!(compose(&empty(), &many[..MAX_ATTACHED]).is_ok());
    }

    #[test]
    fn policy_errors_in_a_provider_rule_name_the_provider() {
        let e = PolicyError {
            source_name: COMPOSED_SOURCE.into(),
            yaml_path: "network_policies._provider_gh.endpoints[0].host".into(),
            problem: "bad".into(),
        };
        let keys = [("gh", "_provider_gh".to_string(), find("github").unwrap())];
        assert!(blame(&e, &keys).starts_with("provider `gh`: effective policy: "));
        let other = PolicyError {
            yaml_path: "network_policies._provider_gh2".into(),
            ..e
        };
        assert!(blame(&other, &keys).starts_with("effective policy: "));
    }

    #[test]
    fn github_credentials_bind_to_the_profile_hosts() {
        let b = bindings(&[
            attached("gh", "github", &["GITHUB_TOKEN", "GH_TOKEN"]),
            attached("lab", "gitlab", &["GITLAB_TOKEN"]),
        ]);
        assert_eq!(b.len(), 3);
        let (key, provider, hosts) = &b[0];
        assert_eq!((key.as_str(), provider.as_str()), ("GITHUB_TOKEN", "gh"));
        assert!(hosts.contains(&("api.github.com".to_string(), vec![443])));
        assert!(!hosts.iter().any(|(h, _)| h == "raw.githubusercontent.com"));
        assert_eq!(b[1].2, *hosts);
        assert_eq!(b[2].2, [("gitlab.com".to_string(), vec![443])]);
        // An unknown type binds nowhere rather than failing open.
        assert_eq!(bindings(&[attached("x", "nope", &["K"])])[0].2, vec![]);
    }
}
