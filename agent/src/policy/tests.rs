//! Cross-module tests: parse → snapshot → decision, hashing, validation.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;

/// The reference's example policy (§1.9).
const EXAMPLE: &str = r#"
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /etc, /proc, /dev/urandom]
  read_write: [/tmp, /dev/null]
landlock:
  compatibility: best_effort

network_policies:
  pypi_read:
    name: pypi-read
    endpoints:
      - { host: pypi.org, port: 443, protocol: rest, enforcement: enforce, access: read-only }
      - { host: files.pythonhosted.org, port: 443, protocol: rest, enforcement: enforce, access: read-only }
    binaries:
      - path: /usr/bin/pip3
      - path: "/sandbox/.venv/bin/*"

  tracker_issues:
    endpoints:
      - host: tracker.example.com
        ports: [443]
        protocol: rest
        enforcement: enforce
        allow_encoded_slash: true
        rules:
          - allow: { method: GET, path: "/api/v4/projects/**" }
          - allow:
              method: POST
              path: "/api/v4/projects/*/issues"
              query: { confidential: "false" }
        deny_rules:
          - { method: "*", path: "/api/v4/projects/*/members/**" }
    binaries:
      - path: /usr/bin/curl

  ci_database:
    endpoints:
      - host: db.ci.internal
        port: 5432
        allowed_ips: ["10.20.0.0/16"]
    binaries:
      - path: /usr/bin/psql
"#;

/// A small policy exercising every kind of host.
const HOSTS: &str = r#"
version: 1
network_policies:
  example:
    endpoints:
      - host: example.test
        port: 8080
      - host: "*.wild.test"
        ports: [443, 8443]
      - host: "**.deep.test"
        port: 443
    binaries:
      - path: /usr/bin/curl
  anything_python:
    endpoints:
      - host: 192.0.2.10
        port: 9000
      - host: "2001:db8::10"
        port: 9000
    binaries:
      - path: /usr/bin/python3*
  open_to_all:
    endpoints:
      - host: public.test
        port: 80
  subnet:
    endpoints:
      - allowed_ips: ["198.51.100.0/24"]
        port: 7000
    binaries:
      - path: /usr/bin/nc
"#;

fn parse(yaml: &str) -> Policy {
    match Policy::parse("t.yaml", yaml) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn err(yaml: &str) -> PolicyError {
    match Policy::parse("t.yaml", yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e,
    }
}

fn eval_at(policy: &Policy, names: &[&str], ip: IpAddr, port: u16, bins: &[&str]) -> L4Decision {
    let hostnames: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let paths: Vec<&Path> = bins.iter().map(Path::new).collect();
    policy.evaluate_l4(&L4Request {
        hostnames: &hostnames,
        ip,
        port,
        binaries: &paths,
    })
}

fn eval(policy: &Policy, names: &[&str], port: u16, bins: &[&str]) -> L4Decision {
    eval_at(
        policy,
        names,
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        port,
        bins,
    )
}

fn allowed_rule(d: &L4Decision) -> Option<&str> {
    match d {
        L4Decision::Allow(a) => Some(&a.rule),
        L4Decision::Deny { .. } => None,
    }
}

fn deny_reason(d: L4Decision) -> String {
    match d {
        L4Decision::Deny { reason } => reason,
        L4Decision::Allow(a) => panic!("expected a deny, got {a:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_reference_example_loads() {
    let p = parse(EXAMPLE);
    assert_eq!(p.rule_count(), 3);
    assert_eq!(
        p.warnings(),
        [
            "`filesystem_policy` is parsed but not enforced by Portcullis",
            "`landlock` is parsed but not enforced by Portcullis",
        ]
    );
    let pypi = p.rule("pypi_read").unwrap();
    assert_eq!(pypi.name, "pypi-read");
    assert_eq!(p.rule("ci_database").unwrap().name, "ci_database");
    let tracker = p.endpoint("tracker_issues", 0).unwrap();
    let l7 = tracker.l7.as_ref().unwrap();
    assert!(tracker.allow_encoded_slash);
    let q = [("confidential", "false")];
    assert!(l7.allows("POST", "/api/v4/projects/7/issues", &q));
    assert!(!l7.allows(
        "POST",
        "/api/v4/projects/7/issues",
        &[("confidential", "true")]
    ));
    assert!(l7.allows("GET", "/api/v4/projects/7/members/3", &q));
    assert!(
        l7.denied_by("GET", "/api/v4/projects/7/members/3", &q)
            .is_some()
    );
}

#[test]
fn allows_by_host_port_and_binary() {
    let p = parse(HOSTS);
    let d = eval(&p, &["example.test"], 8080, &["/usr/bin/curl"]);
    assert_eq!(
        d,
        L4Decision::Allow(L4Allow {
            rule: "example".into(),
            host: "example.test".into(),
            endpoint: EndpointSummary {
                host_pattern: "example.test".into(),
                ports: vec![8080],
                protocol: String::new(),
                tls_skip: false,
                enforcement_audit: false,
                allowed_ips: vec![],
                exact_declared_host: true,
                host_is_ip_literal: false,
                allow_uninspected_credentials: false,
            },
        })
    );
    assert!(allowed_rule(&eval(&p, &["EXAMPLE.test."], 8080, &["/usr/bin/curl"])).is_some());
    assert!(allowed_rule(&eval(&p, &["example.test"], 8081, &["/usr/bin/curl"])).is_none());
}

#[test]
fn wildcards_match_per_reference() {
    let p = parse(HOSTS);
    let curl = &["/usr/bin/curl"];
    let ok = |names: &[&str], port| allowed_rule(&eval(&p, names, port, curl)).is_some();
    assert!(ok(&["a.wild.test"], 443));
    assert!(ok(&["a.wild.test"], 8443));
    assert!(!ok(&["a.wild.test"], 80));
    assert!(!ok(&["wild.test"], 443));
    assert!(!ok(&["a.b.wild.test"], 443));
    assert!(ok(&["a.b.c.deep.test"], 443));
    assert!(!ok(&["deep.test"], 443));
    // Any of the names the workload used may match.
    assert!(ok(&["nope.test", "a.wild.test"], 443));
    let d = eval(&p, &["nope.test", "x.wild.test"], 443, curl);
    let L4Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(a.host, "x.wild.test");
    assert_eq!(a.endpoint.host_pattern, "*.wild.test");
    assert!(!a.endpoint.exact_declared_host);
}

#[test]
fn ip_literal_hosts_match_the_destination_ip() {
    let p = parse(HOSTS);
    let py = &["/usr/bin/python3.12"];
    let d = eval_at(&p, &[], ip("192.0.2.10"), 9000, py);
    let L4Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (a.rule.as_str(), a.host.as_str()),
        ("anything_python", "192.0.2.10")
    );
    assert!(a.endpoint.host_is_ip_literal);
    // IPv4-mapped and IPv6 forms.
    assert!(allowed_rule(&eval_at(&p, &[], ip("::ffff:192.0.2.10"), 9000, py)).is_some());
    assert!(allowed_rule(&eval_at(&p, &[], ip("2001:db8::10"), 9000, py)).is_some());
    assert!(allowed_rule(&eval_at(&p, &[], ip("192.0.2.11"), 9000, py)).is_none());
}

#[test]
fn hostless_endpoints_match_by_allowed_ips() {
    let p = parse(HOSTS);
    let nc = &["/usr/bin/nc"];
    let d = eval_at(&p, &["anything.test"], ip("198.51.100.7"), 7000, nc);
    let L4Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (a.rule.as_str(), a.host.as_str()),
        ("subnet", "198.51.100.7")
    );
    assert!(allowed_rule(&eval_at(&p, &[], ip("198.51.101.7"), 7000, nc)).is_none());
}

#[test]
fn binaries_match_exe_ancestors_and_globs() {
    let p = parse(HOSTS);
    let ok = |bins: &[&str]| allowed_rule(&eval(&p, &["example.test"], 8080, bins)).is_some();
    assert!(ok(&["/usr/bin/curl"]));
    assert!(ok(&["/usr/bin/env", "/usr/bin/curl", "/bin/bash"]));
    assert!(!ok(&["/usr/bin/wget", "/bin/bash"]));
    assert!(!ok(&[]));
    let py =
        |bins: &[&str]| allowed_rule(&eval_at(&p, &[], ip("192.0.2.10"), 9000, bins)).is_some();
    assert!(py(&["/usr/bin/python3"]));
    assert!(py(&["/usr/bin/python3.11"]));
    assert!(py(&["/tmp/x", "/usr/bin/python3.11"]));
    assert!(!py(&["/usr/bin/python2"]));
    assert!(!py(&["/usr/bin/python3/evil"]));
    // No binaries listed: any binary, even none.
    assert!(allowed_rule(&eval(&p, &["public.test"], 80, &[])).is_some());
    assert!(allowed_rule(&eval(&p, &["public.test"], 80, &["/x"])).is_some());
}

#[test]
fn deny_reasons_are_the_rego_texts() {
    assert_eq!(
        deny_reason(eval(
            &Policy::deny_all(),
            &["example.test"],
            8080,
            &["/usr/bin/curl"]
        )),
        "network connections not allowed by policy"
    );
    let p = parse(HOSTS);
    assert_eq!(
        deny_reason(eval(
            &p,
            &["Other.Test", "b.test"],
            8080,
            &["/usr/bin/curl"]
        )),
        "endpoint other.test:8080 is not allowed by any policy"
    );
    assert_eq!(
        deny_reason(eval_at(&p, &[], ip("192.0.2.99"), 22, &["/usr/bin/ssh"])),
        "endpoint 192.0.2.99:22 is not allowed by any policy"
    );
    assert_eq!(
        deny_reason(eval(
            &p,
            &["example.test"],
            8080,
            &["/usr/bin/wget", "/bin/sh"]
        )),
        "binary '/usr/bin/wget' not allowed in policy 'example' (ancestors: [/bin/sh])"
    );
}

#[test]
fn binary_misses_list_every_matching_rule_in_key_order() {
    let p = parse(
        r#"
version: 1
network_policies:
  zeta:
    endpoints: [{host: api.test, port: 443}]
    binaries: [{path: /usr/bin/curl}]
  alpha:
    endpoints: [{host: "*.api.test", port: 443}, {host: api.test, port: 443}]
    binaries: [{path: /usr/bin/git}]
  nope:
    endpoints: [{host: other.test, port: 443}]
    binaries: [{path: /usr/bin/wget}]
"#,
    );
    assert_eq!(
        deny_reason(eval(
            &p,
            &["api.test"],
            443,
            &["/usr/bin/python3", "/bin/bash", "/init"]
        )),
        "binary '/usr/bin/python3' not allowed in policy 'alpha' (ancestors: [/bin/bash, /init]); \
         binary '/usr/bin/python3' not allowed in policy 'zeta' (ancestors: [/bin/bash, /init])"
    );
}

#[test]
fn the_smallest_matching_key_wins() {
    let p = parse(
        r#"
version: 1
network_policies:
  b_second:
    endpoints: [{host: api.test, port: 443, protocol: rest, access: full}]
    binaries: [{path: /usr/bin/curl}]
  a_first:
    endpoints: [{host: "*.test.example", port: 443}, {host: api.test, port: 443}]
    binaries: [{path: /usr/bin/curl}, {path: /usr/bin/git}]
  c_third:
    endpoints: [{host: api.test, port: 443}]
"#,
    );
    let d = eval(&p, &["api.test"], 443, &["/usr/bin/curl"]);
    let L4Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(a.rule, "a_first");
    assert_eq!(a.endpoint.protocol, "");
    // When the smaller key's binaries do not match, the next one wins.
    assert_eq!(
        allowed_rule(&eval(&p, &["api.test"], 443, &["/usr/bin/wget"])),
        Some("c_third")
    );
    // All matches, for the L7 decision.
    let hostnames = vec!["api.test".to_string()];
    let bins = [Path::new("/usr/bin/curl")];
    let m = p.matching_endpoints(&L4Request {
        hostnames: &hostnames,
        ip: ip("203.0.113.1"),
        port: 443,
        binaries: &bins,
    });
    let keys: Vec<(&str, usize)> = m
        .iter()
        .map(|m| (m.rule.key.as_str(), m.endpoint_index))
        .collect();
    assert_eq!(keys, [("a_first", 1), ("b_second", 0), ("c_third", 0)]);
    assert!(m[1].endpoint.l7.is_some());
}

#[test]
fn enforcement_defaults_to_enforce() {
    let p = parse(
        r#"
version: 1
network_policies:
  r:
    endpoints:
      - {host: a.test, port: 443, protocol: rest, access: read-only}
      - {host: b.test, port: 443, protocol: rest, access: read-only, enforcement: audit}
"#,
    );
    let r = p.rule("r").unwrap();
    assert!(!r.endpoints[0].summary.enforcement_audit);
    assert!(r.endpoints[1].summary.enforcement_audit);
    assert_eq!(
        p.canonical_json()["network_policies"]["r"]["endpoints"][0]["enforcement"],
        "enforce"
    );
}

#[test]
fn exact_declared_host_needs_an_exact_host_and_a_binary() {
    let p = parse(
        r#"
version: 1
network_policies:
  with_bin:
    endpoints: [{host: db.corp, port: 5432}, {host: "*.corp.example", port: 5432}]
    binaries: [{path: /usr/bin/psql}]
  without_bin:
    endpoints: [{host: db.corp, port: 5432}]
"#,
    );
    let w = &p.rule("with_bin").unwrap().endpoints;
    assert!(w[0].summary.exact_declared_host);
    assert!(!w[1].summary.exact_declared_host);
    assert!(
        !p.rule("without_bin").unwrap().endpoints[0]
            .summary
            .exact_declared_host
    );
}

#[test]
fn hash_is_stable_across_order_and_spelling() {
    let a = parse(
        r#"
version: 1
network_policies:
  one:
    endpoints: [{host: a.test, port: 443}]
    binaries: [{path: /usr/bin/curl}]
  two:
    name: two
    endpoints: [{host: b.test, ports: [443, 80], protocol: rest, access: read-only, enforcement: enforce}]
"#,
    );
    let b = parse(
        r#"
network_policies:
  two:
    endpoints:
      - access: read-only
        protocol: rest
        ports: [80, 443, 443]
        host: B.test
  one:
    binaries: [{path: /usr/bin/curl}]
    name: one
    endpoints: [{ports: [443], host: a.test}]
version: 1
"#,
    );
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.canonical_json(), b.canonical_json());
    assert_eq!(a.hash().len(), 64);
    assert!(
        a.hash()
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    );

    let changed = parse(&HOSTS.replace("port: 8080", "port: 8081"));
    assert_ne!(parse(HOSTS).hash(), changed.hash());
    let renamed = parse(&HOSTS.replace("  subnet:", "  subnet2:"));
    assert_ne!(parse(HOSTS).hash(), renamed.hash());
    // Unenforced sections are part of the document too.
    assert_ne!(
        parse(EXAMPLE).hash(),
        parse(&EXAMPLE.replace("best_effort", "hard_requirement")).hash()
    );
    // The empty policy and deny_all are the same document.
    assert_eq!(parse("version: 1\n").hash(), Policy::deny_all().hash());
}

#[test]
fn hash_is_sha256_of_the_compact_sorted_json() {
    let p = parse(EXAMPLE);
    let bytes = serde_json::to_vec(&p.canonical_json()).unwrap();
    assert_eq!(p.hash(), canonical::sha256_hex(&bytes));
}

#[test]
fn canonical_json_is_the_normalised_document() {
    let p = parse(
        r#"
version: 1
landlock: {compatibility: best_effort}
network_policies:
  gh:
    endpoints:
      - host: API.GitHub.com
        port: 443
        protocol: REST
        tls: skip
        rules:
          - allow: {method: get, path: "/repos/**", query: {per_page: 100, state: {any: [open, closed]}}}
        deny_rules: [{method: DELETE, path: "**"}]
        allowed_ips: ["140.82.112.0/20", "140.82.112.3"]
        allow_uninspected_credentials: true
    binaries: [{path: /usr/bin/gh}]
"#,
    );
    assert_eq!(
        p.canonical_json(),
        serde_json::json!({
            "version": 1,
            "landlock": {"compatibility": "best_effort"},
            "network_policies": {"gh": {
                "name": "gh",
                "binaries": [{"path": "/usr/bin/gh"}],
                "endpoints": [{
                    "host": "api.github.com",
                    "ports": [443],
                    "protocol": "rest",
                    "tls": "skip",
                    "enforcement": "enforce",
                    "rules": [{"allow": {"method": "GET", "path": "/repos/**",
                        "query": {"per_page": "100", "state": {"any": ["open", "closed"]}}}}],
                    "deny_rules": [{"method": "DELETE", "path": "**"}],
                    "allowed_ips": ["140.82.112.0/20", "140.82.112.3/32"],
                    "allow_uninspected_credentials": true,
                }],
            }},
        })
    );
    let s = &p.rule("gh").unwrap().endpoints[0].summary;
    assert!(s.tls_skip && s.allow_uninspected_credentials);
}

#[test]
fn warnings_say_what_is_not_enforced_or_deprecated() {
    let p = parse(
        r#"
version: 1
process: {run_as_user: sandbox}
network_middlewares: {}
network_policies:
  r:
    endpoints:
      - {host: a.test, port: 443, tls: terminate}
      - {host: b.test, port: 80, ports: [443]}
      - {allowed_ips: ["10.0.0.0/8"], port: 443}
    binaries: [{path: /usr/bin/curl, harness: true}]
"#,
    );
    assert_eq!(
        p.warnings(),
        [
            "`process` is parsed but not enforced by Portcullis",
            "`network_middlewares` is parsed but not enforced by Portcullis",
            "network_policies.r.endpoints[0].tls: `tls: terminate` is deprecated and behaves like omitting `tls` (automatic TLS termination); remove it",
            "network_policies.r.endpoints[1].port: ignored because `ports` is also given; keep one of them",
            "network_policies.r.endpoints[2].allowed_ips[0]: `10.0.0.0/8` is broader than /16; prefer a narrower range",
            "network_policies.r.binaries[0].harness: `harness` is deprecated and ignored; remove it",
        ]
    );
}

/// (replace in BASE, replacement, expected path, expected text in problem)
type Case = (&'static str, &'static str, &'static str, &'static str);

const BASE: &str = r#"version: 1
network_policies:
  github:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        access: read-only
      - host: uploads.github.com
        ports: [443, 8443]
    binaries:
      - path: /usr/bin/gh
"#;

const ERROR_CASES: &[Case] = &[
    ("version: 1", "version: 2", "version", "set `version: 1`"),
    (
        "version: 1",
        "version: \"1\"",
        "version",
        "set `version: 1`",
    ),
    ("version: 1\n", "", "version", "missing; add `version: 1`"),
    (
        "version: 1",
        "version: 1\nnetwork_policy: {}",
        "network_policy",
        "did you mean `network_policies`",
    ),
    (
        "  github:",
        "  _provider_github:",
        "network_policies._provider_github",
        "reserved",
    ),
    (
        "    binaries:",
        "    binaries:\n      - path: /x\n    extra: 1\n    binaries2:",
        "network_policies.github.extra",
        "unknown key; known keys are name, endpoints, binaries",
    ),
    (
        "      - host: api.github.com",
        "      - hots: api.github.com",
        "network_policies.github.endpoints[0].hots",
        "unknown key; known keys are host, port, ports, path, protocol, tls,",
    ),
    (
        "      - host: api.github.com\n        port: 443\n",
        "      - port: 443\n",
        "network_policies.github.endpoints[0].host",
        "missing; add e.g. `host: api.example.com`",
    ),
    (
        "host: api.github.com",
        "host: \"*.com\"",
        "network_policies.github.endpoints[0].host",
        "TLD wildcard",
    ),
    (
        "host: api.github.com",
        "host: \"*\"",
        "network_policies.github.endpoints[0].host",
        "bare wildcard",
    ),
    (
        "host: api.github.com",
        "host: \"a.**.github.com\"",
        "network_policies.github.endpoints[0].host",
        "whole first label",
    ),
    (
        "host: api.github.com",
        "host: \"a.b*.github.com\"",
        "network_policies.github.endpoints[0].host",
        "only the first label may be partial",
    ),
    (
        "host: api.github.com",
        "host: https://api.github.com",
        "network_policies.github.endpoints[0].host",
        "scheme",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443, 70000]",
        "network_policies.github.endpoints[1].ports[1]",
        "port 70000 is out of range; use 1-65535",
    ),
    (
        "ports: [443, 8443]",
        "ports: [0]",
        "network_policies.github.endpoints[1].ports[0]",
        "port 0 is out of range",
    ),
    (
        "ports: [443, 8443]",
        "port: -1",
        "network_policies.github.endpoints[1].port",
        "out of range",
    ),
    (
        "ports: [443, 8443]",
        "port: \"443\"",
        "network_policies.github.endpoints[1].port",
        "without quotes",
    ),
    (
        "        ports: [443, 8443]\n",
        "",
        "network_policies.github.endpoints[1].port",
        "missing; add `port: 443`",
    ),
    (
        "path: /usr/bin/gh",
        "path: gh",
        "network_policies.github.binaries[0].path",
        "not absolute",
    ),
    (
        "      - path: /usr/bin/gh",
        "      - /usr/bin/gh",
        "network_policies.github.binaries[0]",
        "write binaries as `- path: /usr/bin/gh`",
    ),
    (
        "protocol: rest",
        "protocol: graphql",
        "network_policies.github.endpoints[0].protocol",
        "not supported by Portcullis yet",
    ),
    (
        "protocol: rest",
        "protocol: sql",
        "network_policies.github.endpoints[0].protocol",
        "not supported by Portcullis yet",
    ),
    (
        "protocol: rest",
        "protocol: https",
        "network_policies.github.endpoints[0].protocol",
        "unknown protocol `https`",
    ),
    (
        "access: read-only",
        "access: read-only\n        tls: bogus",
        "network_policies.github.endpoints[0].tls",
        "unknown tls value `bogus`",
    ),
    (
        "access: read-only",
        "access: read-only\n        enforcement: strict",
        "network_policies.github.endpoints[0].enforcement",
        "use enforce (the default) or audit",
    ),
    (
        "access: read-only",
        "access: read",
        "network_policies.github.endpoints[0].access",
        "use read-only, read-write or full",
    ),
    (
        "access: read-only",
        "access: full\n        rules: [{allow: {method: GET, path: /x}}]",
        "network_policies.github.endpoints[0].rules",
        "mutually exclusive",
    ),
    (
        "access: read-only",
        "rules: []",
        "network_policies.github.endpoints[0].rules",
        "`rules` is empty",
    ),
    (
        "access: read-only",
        "access: full\n        deny_rules: []",
        "network_policies.github.endpoints[0].deny_rules",
        "`deny_rules` is empty",
    ),
    (
        "        access: read-only\n",
        "        deny_rules: [{method: GET, path: /x}]\n",
        "network_policies.github.endpoints[0].deny_rules",
        "need an allow base",
    ),
    (
        "        protocol: rest\n        access: read-only\n",
        "        deny_rules: [{method: GET, path: /x}]\n",
        "network_policies.github.endpoints[0].deny_rules",
        "require L7 inspection",
    ),
    (
        "        protocol: rest\n",
        "",
        "network_policies.github.endpoints[0].access",
        "needs `protocol: rest`",
    ),
    (
        "        access: read-only\n",
        "",
        "network_policies.github.endpoints[0].access",
        "missing; `protocol: rest` needs `access`",
    ),
    (
        "protocol: rest",
        "protocol: websocket\n        request_body_credential_rewrite: true",
        "network_policies.github.endpoints[0].request_body_credential_rewrite",
        "only `protocol: rest`",
    ),
    (
        "        protocol: rest\n        access: read-only\n",
        "        protocol: tcp\n",
        "network_policies.github.endpoints[0].host",
        "__OK__",
    ),
    (
        "host: uploads.github.com",
        "host: 192.0.2.1\n        protocol: tcp",
        "network_policies.github.endpoints[1].host",
        "not an IP literal",
    ),
    (
        "host: uploads.github.com",
        "host: uploads.github.com.\n        protocol: tcp",
        "network_policies.github.endpoints[1].host",
        "without a trailing dot; write `uploads.github.com`",
    ),
    (
        "        protocol: rest\n        access: read-only\n",
        "        protocol: tcp\n        access: read-only\n",
        "network_policies.github.endpoints[0].access",
        "`protocol: tcp` is plain L4",
    ),
    (
        "        protocol: rest\n        access: read-only\n",
        "        protocol: tcp\n        path: /x\n",
        "network_policies.github.endpoints[0].path",
        "`protocol: tcp` is plain L4",
    ),
    (
        "access: read-only",
        "access: read-only\n        path: v1",
        "network_policies.github.endpoints[0].path",
        "must start with `/`",
    ),
    (
        "access: read-only",
        "rules: [{allow: {method: GET, path: v1}}]",
        "network_policies.github.endpoints[0].rules[0].allow.path",
        "must start with `/`",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        allowed_ips: [not-an-ip]",
        "network_policies.github.endpoints[1].allowed_ips[0]",
        "not an IP address or CIDR",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        allowed_ips: [127.0.0.0/8]",
        "network_policies.github.endpoints[1].allowed_ips[0]",
        "overlaps loopback",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        allowed_ips: [169.254.169.254]",
        "network_policies.github.endpoints[1].allowed_ips[0]",
        "overlaps link-local",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        allowed_ips: [0.0.0.0/0]",
        "network_policies.github.endpoints[1].allowed_ips[0]",
        "always blocked",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        allowed_ips: [\"::/0\"]",
        "network_policies.github.endpoints[1].allowed_ips[0]",
        "always blocked",
    ),
    (
        "ports: [443, 8443]",
        "ports: [443]\n        credential_signing: sigv4",
        "network_policies.github.endpoints[1].credential_signing",
        "not supported by Portcullis yet",
    ),
    (
        "    endpoints:\n      - host: api.github.com\n        port: 443\n        protocol: rest\n        access: read-only\n      - host: uploads.github.com\n        ports: [443, 8443]\n",
        "    endpoints: []\n",
        "network_policies.github.endpoints",
        "at least one endpoint",
    ),
    (
        "    endpoints:\n      - host: api.github.com\n        port: 443\n        protocol: rest\n        access: read-only\n      - host: uploads.github.com\n        ports: [443, 8443]\n",
        "",
        "network_policies.github.endpoints",
        "at least one endpoint",
    ),
    (
        "  github:\n",
        "  github:\n    name: [x]\n",
        "network_policies.github.name",
        "expected a string",
    ),
    (
        "        port: 443\n",
        "        port: 443\n       bad: indent\n",
        "line 7, column 8",
        "invalid YAML",
    ),
    (
        "version: 1",
        "version: 1\nversion: 1",
        "line 1, column 1",
        "duplicate key \"version\"",
    ),
    (
        "  github:\n",
        "  github:\n    name: a\n    name: b\n",
        "line 4, column 5",
        "duplicate key \"name\" in `network_policies.github` (the mapping that starts here)",
    ),
];

#[test]
fn every_validation_error_names_the_path_and_the_fix() {
    // The base is valid.
    parse(BASE);
    for (from, to, path, needle) in ERROR_CASES {
        assert!(BASE.contains(from), "case does not apply: {from:?}");
        let yaml = BASE.replacen(from, to, 1);
        if *needle == "__OK__" {
            parse(&yaml);
            continue;
        }
        let e = err(&yaml);
        assert_eq!(e.yaml_path, *path, "{from:?} -> {to:?}: {e}");
        assert!(e.problem.contains(needle), "{from:?} -> {to:?}: {e}");
        assert_eq!(
            e.to_string(),
            format!("t.yaml: {}: {}", e.yaml_path, e.problem)
        );
    }
}

#[test]
fn documents_that_are_not_policies() {
    for (yaml, path, needle) in [
        ("", "document", "the policy is empty"),
        ("# nothing\n", "document", "the policy is empty"),
        ("[1, 2]", "document", "expected a mapping"),
        (
            "version: 1\n---\nversion: 1\n",
            "document",
            "single YAML document",
        ),
        ("version: 1\n1: x\n", "document", "keys must be strings"),
        (
            "version: 1\nnetwork_policies: [a]\n",
            "network_policies",
            "expected a mapping",
        ),
        (
            "version: 1\nnetwork_policies:\n  r: [a]\n",
            "network_policies.r",
            "expected a mapping",
        ),
        ("version: !big 1\n", "version", "tagged value"),
    ] {
        let e = err(yaml);
        assert_eq!(e.yaml_path, path, "{yaml:?}: {e}");
        assert!(e.problem.contains(needle), "{yaml:?}: {e}");
    }
}

#[test]
fn oversized_policies_are_rejected() {
    let big = format!("version: 1\n# {}\n", "x".repeat(MAX_POLICY_BYTES));
    let e = err(&big);
    assert_eq!(e.yaml_path, "document");
    assert!(e.problem.contains("over the limit of 262144 bytes"), "{e}");
    assert!(Policy::parse_with_limit("t.yaml", &big, usize::MAX).is_ok());
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let p = parse(
        r#"
version: 1
network_policies:
  a:
    endpoints:
      - &ep {host: a.test, port: 443}
      - <<: *ep
        host: b.test
"#,
    );
    let hosts: Vec<&str> = p
        .rule("a")
        .unwrap()
        .endpoints
        .iter()
        .map(|e| e.summary.host_pattern.as_str())
        .collect();
    assert_eq!(hosts, ["a.test", "b.test"]);
}

#[test]
fn hostless_tcp_and_websocket_presets() {
    let e = err(
        "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{allowed_ips: [10.1.0.0/16], port: 5432, protocol: tcp}]\n",
    );
    assert_eq!(e.yaml_path, "network_policies.r.endpoints[0].host");
    let p = parse(
        "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{host: ws.test, port: 443, protocol: websocket, access: read-write, websocket_credential_rewrite: true}]\n",
    );
    let ep = p.endpoint("r", 0).unwrap();
    assert!(ep.websocket_credential_rewrite);
    assert!(
        ep.l7
            .as_ref()
            .unwrap()
            .allows("WEBSOCKET_TEXT", "/", &[] as &[(&str, &str)])
    );
}

#[test]
fn policies_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Policy>();
    let p = parse(HOSTS);
    let q = p.clone();
    std::thread::spawn(move || q.rule_count()).join().unwrap();
    assert!(format!("{p:?}").contains(p.hash()));
}

#[test]
fn ssrf_follows_the_matched_endpoint() {
    let p = parse(EXAMPLE);
    let names = vec!["db.ci.internal".to_string()];
    let bins = [Path::new("/usr/bin/psql")];
    let d = p.evaluate_l4(&L4Request {
        hostnames: &names,
        ip: ip("10.20.3.4"),
        port: 5432,
        binaries: &bins,
    });
    let L4Decision::Allow(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        ssrf::permitted_addresses(&a.endpoint, 5432, &[ip("10.20.3.4")]),
        Ok(vec![ip("10.20.3.4")])
    );
    assert_eq!(
        ssrf::permitted_addresses(&a.endpoint, 5432, &[ip("10.21.3.4")]),
        Err(ssrf::SsrfDenial::NotInAllowedIps {
            ip: ip("10.21.3.4")
        })
    );
}

/// Deterministic byte-level mutations of valid policies must never panic.
#[test]
fn mutated_policies_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"*.:/-[]{}'\"#&!|>\n 0123456789abz_";
    for base in [EXAMPLE, HOSTS, BASE] {
        for _ in 0..400 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    _ => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Ok(p) = Policy::parse("fuzz.yaml", &text) {
                let _ = eval(
                    &p,
                    &["a.wild.test", "api.github.com"],
                    443,
                    &["/usr/bin/curl"],
                );
                let _ = p.canonical_json();
            }
        }
    }
}

/// Builds a policy of `n` rules: exact hosts, wildcard hosts and IP
/// literals, each rule with a few binaries. Shared shape with the bench.
fn big_policy_yaml(n: usize) -> String {
    let mut y = String::from("version: 1\nnetwork_policies:\n");
    for i in 0..n {
        let host = match i % 3 {
            0 => format!("svc{i}.example.com"),
            1 => format!("\"*.t{i}.example.net\""),
            _ => format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        };
        y.push_str(&format!(
            "  rule_{i:05}:\n    endpoints:\n      - host: {host}\n        ports: [443, {}]\n",
            8000 + i % 100
        ));
        if i % 3 == 2 {
            y.push_str("        allowed_ips: [\"10.0.0.0/16\"]\n");
        }
        y.push_str(&format!(
            "    binaries:\n      - path: /usr/bin/tool{i}\n      - path: /opt/app{}/bin/*\n      - path: /usr/local/bin/helper\n",
            i % 50
        ));
    }
    y
}

#[test]
fn ten_thousand_rules_decide_correctly() {
    let yaml = big_policy_yaml(10_000);
    let p = Policy::parse_with_limit("big.yaml", &yaml, usize::MAX).unwrap();
    assert_eq!(p.rule_count(), 10_000);
    let any_ip = ip("93.184.216.34");
    let start = std::time::Instant::now();

    // Exact host.
    let d = eval_at(
        &p,
        &["svc3000.example.com"],
        any_ip,
        443,
        &["/usr/bin/tool3000"],
    );
    assert_eq!(allowed_rule(&d), Some("rule_03000"));
    let d = eval_at(
        &p,
        &["svc3000.example.com"],
        any_ip,
        8000,
        &["/usr/bin/tool3000"],
    );
    assert_eq!(allowed_rule(&d), Some("rule_03000"));
    let d = eval_at(
        &p,
        &["svc3000.example.com"],
        any_ip,
        8001,
        &["/usr/bin/tool3000"],
    );
    assert_eq!(allowed_rule(&d), None);
    // Wildcard host, glob binary via an ancestor.
    let d = eval_at(
        &p,
        &["api.t7000.example.net"],
        any_ip,
        443,
        &["/bin/sh", "/opt/app0/bin/run"],
    );
    assert_eq!(allowed_rule(&d), Some("rule_07000"));
    let d = eval_at(
        &p,
        &["t7000.example.net"],
        any_ip,
        443,
        &["/opt/app0/bin/run"],
    );
    assert_eq!(
        deny_reason(d),
        "endpoint t7000.example.net:443 is not allowed by any policy"
    );
    // IP literal: i = 9998 -> 10.0.39.14.
    let d = eval_at(&p, &[], ip("10.0.39.14"), 443, &["/usr/bin/tool9998"]);
    assert_eq!(allowed_rule(&d), Some("rule_09998"));
    // The shared helper binary is in every rule.
    let d = eval_at(
        &p,
        &["svc0.example.com"],
        any_ip,
        443,
        &["/usr/local/bin/helper"],
    );
    assert_eq!(allowed_rule(&d), Some("rule_00000"));
    // Binary denied.
    let d = eval_at(
        &p,
        &["svc3000.example.com"],
        any_ip,
        443,
        &["/usr/bin/tool3001"],
    );
    assert_eq!(
        deny_reason(d),
        "binary '/usr/bin/tool3001' not allowed in policy 'rule_03000' (ancestors: [])"
    );
    // Unknown host.
    let d = eval_at(
        &p,
        &["unknown.example.org"],
        any_ip,
        443,
        &["/usr/bin/tool1"],
    );
    assert_eq!(
        deny_reason(d),
        "endpoint unknown.example.org:443 is not allowed by any policy"
    );
    // Generous bound: the index makes these microseconds, a scan would
    // take far longer in debug builds.
    assert!(
        start.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

/// Regressions from the `policy_yaml` fuzz target: strings serde_json
/// writes raw and libyaml refuses (C1 controls, noncharacters) or changes
/// (U+0085, a YAML line break). Merges and revokes re-parse the canonical
/// form; it must come back exactly.
#[test]
fn the_canonical_form_parses_back_to_the_same_policy() {
    let cases = [
        "version: 1\nlandlock: \"\\x80\"\n",
        "version: 1\nnetwork_policies:\n  r:\n    endpoints: [{host: a.test, port: 443}]\n    binaries: [{path: \"/usr/bin/\\uFFFF\"}]\n",
        "version: 1\nnetwork_policies:\n  r:\n    name: \"x\\x85y\"\n    endpoints: [{host: a.test, port: 443}]\n",
    ];
    for yaml in cases {
        let policy = Policy::parse("fuzz.yaml", yaml).unwrap();
        let text = document_text(&policy.canonical_json());
        let again = Policy::parse_with_limit("canonical", &text, usize::MAX)
            .unwrap_or_else(|e| panic!("{yaml:?} -> {text:?}: {e}"));
        assert_eq!(again.hash(), policy.hash(), "{yaml:?} -> {text:?}");
        // The old path, JSON text read as YAML, is what failed.
        let json_text = policy.canonical_json().to_string();
        let via_json = Policy::parse_with_limit("json", &json_text, usize::MAX);
        assert!(
            via_json.map_or(true, |p| p.hash() != policy.hash()),
            "{yaml:?}"
        );
    }
}
