//! Policy: the OpenShell-compatible YAML schema, validated into an
//! immutable snapshot that answers the L4 question "may this binary reach
//! this host:port?". Evaluation is pure: no I/O, no clocks.

pub mod glob;

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde::Deserialize;
use thiserror::Error;

/// The policy document (reference §1.1–1.3). Unknown keys are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub version: u32,
    #[serde(default)]
    pub network_policies: BTreeMap<String, NetworkRule>,
    /// Parsed so OpenShell files load; Portcullis does not enforce them.
    #[serde(default)]
    pub filesystem_policy: Option<serde_yaml::Value>,
    #[serde(default)]
    pub landlock: Option<serde_yaml::Value>,
    #[serde(default)]
    pub process: Option<serde_yaml::Value>,
    #[serde(default)]
    pub network_middlewares: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub binaries: Vec<Binary>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u32,
    #[serde(default)]
    pub ports: Vec<u32>,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub tls: String,
    #[serde(default)]
    pub enforcement: String,
    #[serde(default)]
    pub access: String,
    #[serde(default)]
    pub rules: Option<serde_yaml::Value>,
    #[serde(default)]
    pub deny_rules: Option<serde_yaml::Value>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub allow_encoded_slash: bool,
    #[serde(default)]
    pub websocket_credential_rewrite: bool,
    #[serde(default)]
    pub request_body_credential_rewrite: bool,
    #[serde(default)]
    pub allow_uninspected_credentials: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    pub path: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{source_name}: {yaml_path}: {problem}")]
pub struct PolicyError {
    pub source_name: String,
    /// Where in the document, e.g. `network_policies.github.endpoints[0].host`.
    pub yaml_path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// A validated policy, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    /// Plain warnings, e.g. sections parsed but not enforced.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    key: String,
    endpoints: Vec<CompiledEndpoint>,
    /// Empty: any binary.
    binaries: Vec<String>,
}

#[derive(Clone, Debug)]
struct CompiledEndpoint {
    host: String,
    ports: Vec<u16>,
}

/// What the proxy knows about a connection at L4.
#[derive(Clone, Debug)]
pub struct L4Request<'a> {
    /// Names the workload resolved to this address, most recent first.
    pub hostnames: &'a [String],
    pub ip: IpAddr,
    pub port: u16,
    /// The exe path, then each ancestor's.
    pub binaries: &'a [&'a Path],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Decision {
    Allow { rule: String, host: String },
    Deny { reason: String },
}

impl Policy {
    /// Denies everything: a sandbox without a policy.
    pub fn deny_all() -> Self {
        Self {
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn parse(source_name: &str, yaml: &str) -> Result<Self, PolicyError> {
        let err = |yaml_path: &str, problem: String| PolicyError {
            source_name: source_name.to_string(),
            yaml_path: yaml_path.to_string(),
            problem,
        };
        let doc: PolicyDocument = serde_yaml::from_str(yaml).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()));
            err(at.as_deref().unwrap_or("document"), e.to_string())
        })?;
        if doc.version != 1 {
            return Err(err(
                "version",
                format!("version {} is not supported; set `version: 1`", doc.version),
            ));
        }
        let mut warnings = Vec::new();
        for (section, present) in [
            ("filesystem_policy", doc.filesystem_policy.is_some()),
            ("landlock", doc.landlock.is_some()),
            ("process", doc.process.is_some()),
            ("network_middlewares", doc.network_middlewares.is_some()),
        ] {
            if present {
                warnings.push(format!(
                    "{source_name}: `{section}` is parsed but not enforced by Portcullis"
                ));
            }
        }
        let mut rules = Vec::new();
        for (key, rule) in &doc.network_policies {
            let base = format!("network_policies.{key}");
            if key.starts_with("_provider_") {
                return Err(err(
                    &base,
                    "the `_provider_` prefix is reserved for provider rules; rename the rule"
                        .into(),
                ));
            }
            let mut endpoints = Vec::new();
            for (i, ep) in rule.endpoints.iter().enumerate() {
                let at = format!("{base}.endpoints[{i}]");
                endpoints.push(
                    compile_endpoint(ep)
                        .map_err(|(field, problem)| err(&format!("{at}.{field}"), problem))?,
                );
            }
            if endpoints.is_empty() {
                return Err(err(
                    &format!("{base}.endpoints"),
                    "a rule needs at least one endpoint".into(),
                ));
            }
            let mut binaries = Vec::new();
            for (i, b) in rule.binaries.iter().enumerate() {
                if !b.path.starts_with('/') && b.path != "**" {
                    return Err(err(
                        &format!("{base}.binaries[{i}].path"),
                        format!(
                            "`{}` is not absolute; give the full path, e.g. /usr/bin/curl",
                            b.path
                        ),
                    ));
                }
                binaries.push(b.path.clone());
            }
            rules.push(CompiledRule {
                key: key.clone(),
                endpoints,
                binaries,
            });
        }
        Ok(Self { rules, warnings })
    }

    /// Allow iff some rule matches the endpoint and the binary (or an
    /// ancestor). Rules are visited in key order, so the matched rule is the
    /// lexicographically smallest, as in OpenShell.
    pub fn evaluate_l4(&self, req: &L4Request<'_>) -> L4Decision {
        if self.rules.is_empty() {
            return L4Decision::Deny {
                reason: "network connections not allowed by policy".into(),
            };
        }
        let ip_text = req.ip.to_string();
        let candidates: Vec<&str> = req
            .hostnames
            .iter()
            .map(String::as_str)
            .chain([ip_text.as_str()])
            .collect();
        let mut binary_misses = Vec::new();
        for rule in &self.rules {
            let Some(host) = rule.endpoints.iter().find_map(|ep| {
                ep.ports
                    .contains(&req.port)
                    .then(|| candidates.iter().find(|h| glob::host_matches(&ep.host, h)))
                    .flatten()
            }) else {
                continue;
            };
            if rule.binaries.is_empty() || binary_allowed(&rule.binaries, req.binaries) {
                return L4Decision::Allow {
                    rule: rule.key.clone(),
                    host: host.to_string(),
                };
            }
            binary_misses.push(format!(
                "binary '{}' not allowed in policy '{}' (ancestors: [{}])",
                req.binaries
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                rule.key,
                req.binaries
                    .iter()
                    .skip(1)
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if binary_misses.is_empty() {
            let host = candidates.first().copied().unwrap_or_default();
            L4Decision::Deny {
                reason: format!("endpoint {host}:{} is not allowed by any policy", req.port),
            }
        } else {
            L4Decision::Deny {
                reason: binary_misses.join("; "),
            }
        }
    }
}

fn binary_allowed(patterns: &[String], binaries: &[&Path]) -> bool {
    binaries.iter().any(|b| {
        let path = b.to_string_lossy();
        patterns.iter().any(|p| {
            if p.contains('*') {
                glob::path_matches(p, &path)
            } else {
                *p == path
            }
        })
    })
}

fn compile_endpoint(ep: &Endpoint) -> Result<CompiledEndpoint, (&'static str, String)> {
    if ep.host.is_empty() {
        return Err((
            "host",
            "an endpoint needs a host (a name, a glob such as `*.example.com`, or an IP)".into(),
        ));
    }
    if let Some(problem) = glob::host_glob_error(&ep.host) {
        return Err(("host", problem));
    }
    let raw: Vec<u32> = if ep.ports.is_empty() {
        vec![ep.port]
    } else {
        ep.ports.clone()
    };
    let mut ports = Vec::new();
    for p in raw {
        match u16::try_from(p) {
            Ok(p) if p != 0 => ports.push(p),
            _ => {
                let field = if ep.ports.is_empty() { "port" } else { "ports" };
                return Err((field, format!("port {p} is out of range; use 1-65535")));
            }
        }
    }
    Ok(CompiledEndpoint {
        host: ep.host.to_ascii_lowercase(),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const POLICY: &str = r#"
version: 1
network_policies:
  example:
    name: example
    endpoints:
      - host: example.test
        port: 8080
      - host: "*.wild.test"
        ports: [443, 8443]
    binaries:
      - path: /usr/bin/curl
  anything_python:
    endpoints:
      - host: 192.0.2.10
        port: 9000
    binaries:
      - path: /usr/bin/python3*
"#;

    fn eval(policy: &Policy, names: &[&str], port: u16, bins: &[&str]) -> L4Decision {
        let hostnames: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let paths: Vec<&Path> = bins.iter().map(Path::new).collect();
        policy.evaluate_l4(&L4Request {
            hostnames: &hostnames,
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port,
            binaries: &paths,
        })
    }

    #[test]
    fn allows_by_binary_and_port() {
        let p = Policy::parse("t.yaml", POLICY).unwrap();
        assert!(matches!(
            eval(&p, &["example.test"], 8080, &["/usr/bin/curl"]),
            L4Decision::Allow { .. }
        ));
        let denied = eval(&p, &["example.test"], 8080, &["/usr/bin/wget"]);
        assert_eq!(
            denied,
            L4Decision::Deny {
                reason: "binary '/usr/bin/wget' not allowed in policy 'example' (ancestors: [])"
                    .into()
            }
        );
        assert!(matches!(
            eval(&p, &["example.test"], 8081, &["/usr/bin/curl"]),
            L4Decision::Deny { .. }
        ));
    }

    #[test]
    fn ancestors_and_globs_match_binaries() {
        let p = Policy::parse("t.yaml", POLICY).unwrap();
        assert!(matches!(
            eval(
                &p,
                &["a.wild.test"],
                443,
                &["/usr/bin/env", "/usr/bin/curl"]
            ),
            L4Decision::Allow { .. }
        ));
        assert!(matches!(
            eval(&p, &[], 9000, &["/usr/bin/python3.11"]),
            L4Decision::Allow { .. }
        ));
    }

    #[test]
    fn no_policy_denies_everything() {
        assert_eq!(
            eval(
                &Policy::deny_all(),
                &["example.test"],
                8080,
                &["/usr/bin/curl"]
            ),
            L4Decision::Deny {
                reason: "network connections not allowed by policy".into()
            }
        );
    }

    #[test]
    fn errors_name_the_yaml_path_and_the_fix() {
        let bad = POLICY.replace("*.wild.test", "*.test");
        let e = Policy::parse("t.yaml", &bad).unwrap_err();
        assert_eq!(e.yaml_path, "network_policies.example.endpoints[1].host");
        assert!(
            e.to_string()
                .starts_with("t.yaml: network_policies.example.endpoints[1].host: ")
        );
        let e = Policy::parse("t.yaml", &POLICY.replace("port: 8080", "port: 70000")).unwrap_err();
        assert!(e.problem.contains("out of range"), "{e}");
        let e = Policy::parse("t.yaml", &POLICY.replace("version: 1", "version: 2")).unwrap_err();
        assert_eq!(e.yaml_path, "version");
        let e =
            Policy::parse("t.yaml", &POLICY.replace("name: example", "nmae: example")).unwrap_err();
        assert!(e.problem.contains("nmae"), "{e}");
    }

    #[test]
    fn unenforced_sections_warn() {
        let p = Policy::parse(
            "t.yaml",
            "version: 1\nlandlock:\n  compatibility: best_effort\n",
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("not enforced"));
    }
}
