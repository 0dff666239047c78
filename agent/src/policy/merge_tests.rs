//! AddRule merge, coverage and revoke.

use serde_json::{Value as Json, json};

use super::*;

const CURL: &str = "/usr/bin/curl";
const WGET: &str = "/usr/bin/wget";

fn policy(rules_yaml: &str) -> Policy {
    let yaml = format!("version: 1\nnetwork_policies:\n{rules_yaml}");
    Policy::parse("test.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn empty() -> Policy {
    policy("  {}\n")
}

fn prop(name: &str, rule: Json) -> ProposedRule {
    propose(name, &rule).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn bins(paths: &[&str]) -> Json {
    Json::Array(paths.iter().map(|p| json!({ "path": p })).collect())
}

/// A REST endpoint with explicit allow rules.
fn rest(host: &str, port: u16, allow: &[(&str, &str)]) -> Json {
    let rules: Vec<Json> = allow
        .iter()
        .map(|(m, p)| json!({ "allow": { "method": m, "path": p } }))
        .collect();
    json!({ "host": host, "port": port, "protocol": "rest", "rules": rules })
}

fn l4(host: &str, port: u16) -> Json {
    json!({ "host": host, "port": port })
}

fn with_ips(mut endpoint: Json, ips: &[&str]) -> Json {
    endpoint["allowed_ips"] = json!(ips);
    endpoint
}

fn rule(endpoints: Vec<Json>, binaries: &[&str]) -> Json {
    json!({ "endpoints": endpoints, "binaries": bins(binaries) })
}

fn add(current: &Policy, proposed: &ProposedRule) -> Merged {
    add_rule(current, proposed).unwrap_or_else(|e| panic!("{e}"))
}

fn add_err(current: &Policy, proposed: &ProposedRule) -> MergeError {
    match add_rule(current, proposed) {
        Ok(m) => panic!("expected an error, got {:?}", m.policy.canonical_json()),
        Err(e) => e,
    }
}

fn endpoint_json(p: &Policy, key: &str, index: usize) -> Json {
    p.canonical_json()["network_policies"][key]["endpoints"][index].clone()
}

fn allow_rules(p: &Policy, key: &str, index: usize) -> Vec<(String, String)> {
    let ep = p
        .endpoint(key, index)
        .unwrap_or_else(|| panic!("{key}[{index}]"));
    ep.l7
        .as_ref()
        .map(|c| {
            c.rules
                .iter()
                .map(|r| (r.method.clone(), r.path.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(m, p)| ((*m).to_string(), (*p).to_string()))
        .collect()
}

const GITHUB: &str = r#"
  github:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        rules: [{ allow: { method: GET, path: "/repos/**" } }]
    binaries: [{ path: /usr/bin/curl }]
"#;

// ---------------------------------------------------------------- propose

#[test]
fn propose_canonicalises_the_rule() {
    let p = prop(
        "api",
        json!({ "endpoints": [{ "host": "API.Example.com", "ports": [443, 80, 443] }], "binaries": bins(&[CURL]) }),
    );
    assert_eq!(p.name, "api");
    assert_eq!(
        p.canonical,
        json!({
            "name": "api",
            "endpoints": [{ "host": "api.example.com", "ports": [80, 443], "enforcement": "enforce" }],
            "binaries": [{ "path": CURL }],
        })
    );
}

#[test]
fn propose_errors_name_the_field() {
    let e = propose(
        "api",
        &json!({ "endpoints": [{ "host": "api.example.com" }] }),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("endpoints[0].port: missing"),
        "{e}"
    );
    assert!(!e.is_precondition());
    let e = propose(
        "api",
        &json!({ "endpoints": [l4("a.example.com", 443)], "bogus": 1 }),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("bogus: unknown key"), "{e}");
    let e = propose("api", &json!({ "binaries": bins(&[CURL]) })).unwrap_err();
    assert!(e.to_string().starts_with("endpoints: "), "{e}");
    let e = propose("api", &json!("api.example.com:443")).unwrap_err();
    assert!(e.to_string().starts_with("rule: expected an object"), "{e}");
}

#[test]
fn provider_and_empty_names_are_refused() {
    let r = rule(vec![l4("api.example.com", 443)], &[CURL]);
    let e = propose("_provider_github", &r).unwrap_err();
    assert!(matches!(e, MergeError::InvalidRule(_)));
    assert!(e.to_string().contains("reserved"), "{e}");
    assert!(!e.is_precondition());
    let e = propose("  ", &r).unwrap_err();
    assert!(e.to_string().starts_with("ruleName: empty"), "{e}");
    // A hand-built proposal is re-checked by add_rule and covers.
    let forged = ProposedRule {
        name: "_provider_x".into(),
        canonical: r,
    };
    assert!(matches!(
        add_rule(&empty(), &forged),
        Err(MergeError::InvalidRule(_))
    ));
    assert!(!covers(&empty(), &forged));
}

#[test]
fn always_blocked_destinations_are_refused() {
    for (host, class) in [
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("localhost", "loopback"),
        ("LOCALHOST.", "loopback"),
        ("api.localhost", "loopback"),
        ("metadata.google.internal", "metadata"),
        ("*.google.internal", "metadata"),
    ] {
        let e = propose("x", &rule(vec![l4(host, 80)], &[CURL])).unwrap_err();
        assert!(matches!(e, MergeError::AlwaysBlocked(_)), "{host}: {e}");
        let text = e.to_string();
        assert!(text.starts_with("endpoints[0].host: "), "{text}");
        assert!(
            text.contains(&format!(
                "is always blocked ({class}); it cannot be allowed"
            )),
            "{text}"
        );
        assert!(!e.is_precondition());
    }
    let e = propose(
        "x",
        &rule(
            vec![
                l4("ok.example.com", 443),
                json!({ "host": "db.example.com", "port": 5432, "allowed_ips": ["10.0.0.0/8", "169.254.0.0/16"] }),
            ],
            &[CURL],
        ),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoints[1].allowed_ips[1]: 169.254.0.0/16 overlaps link-local addresses, which are always blocked; it cannot be allowed"
    );
    // Private (not always-blocked) addresses are the reviewer's call.
    assert!(propose("x", &rule(vec![l4("10.1.2.3", 443)], &[CURL])).is_ok());
}

// ---------------------------------------------------------------- targets

#[test]
fn a_new_rule_is_inserted_under_the_requested_name() {
    let p = prop(
        "pypi",
        rule(
            vec![rest("pypi.org", 443, &[("GET", "/simple/**")])],
            &["/usr/bin/pip"],
        ),
    );
    let m = add(&empty(), &p);
    assert_eq!(m.target_rule, "pypi");
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    assert_eq!(
        m.policy.canonical_json()["network_policies"]["pypi"],
        p.canonical
    );
    assert!(m.grant.created_rule);
    assert_eq!(m.grant.binaries, vec!["/usr/bin/pip".to_string()]);
    assert_eq!(m.grant.endpoints, vec![p.canonical["endpoints"][0].clone()]);
}

#[test]
fn folds_into_the_named_rule() {
    let current = policy(GITHUB);
    let p = prop(
        "github",
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[("POST", "/repos/*/*/issues")],
            )],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.target_rule, "github");
    assert_eq!(m.policy.rule_count(), 1);
    assert_eq!(
        allow_rules(&m.policy, "github", 0),
        pairs(&[("GET", "/repos/**"), ("POST", "/repos/*/*/issues")])
    );
    assert!(!m.grant.created_rule);
    assert!(m.grant.endpoints.is_empty() && m.grant.binaries.is_empty());
    let change = &m.grant.endpoint_changes[0];
    assert_eq!(
        (change.host.as_str(), change.ports.as_slice()),
        ("api.github.com", &[443][..])
    );
    assert_eq!(
        change.rules,
        vec![json!({ "allow": { "method": "POST", "path": "/repos/*/*/issues" } })]
    );
}

#[test]
fn folds_into_a_rule_with_a_shared_endpoint_and_the_same_binaries() {
    let current = policy(GITHUB);
    let p = prop(
        "github_issues",
        rule(
            vec![
                rest("api.github.com", 443, &[("POST", "/repos/*/*/issues")]),
                l4("uploads.github.com", 443),
            ],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.target_rule, "github");
    assert!(m.policy.rule("github_issues").is_none());
    assert_eq!(m.policy.rule("github").map(|r| r.endpoints.len()), Some(2));
    assert_eq!(m.grant.endpoints, vec![p.canonical["endpoints"][1].clone()]);
}

#[test]
fn keeps_the_requested_name_when_binaries_differ() {
    let current = policy(GITHUB);
    let p = prop(
        "github_wget",
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/**")])],
            &[WGET],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.target_rule, "github_wget");
    assert_eq!(m.policy.rule_count(), 2);
    assert!(m.grant.created_rule);
    assert!(
        m.warnings[0].starts_with("KeptRequestedRuleNameToAvoidWidening: kept rule `github_wget`"),
        "{:?}",
        m.warnings
    );
    // curl did not gain anything.
    assert_eq!(m.policy.rule("github"), current.rule("github"));
}

#[test]
fn keeps_the_requested_name_when_folding_would_change_an_undeclared_port() {
    let current = policy(
        r#"
  web:
    endpoints:
      - { host: api.example.com, ports: [80, 443], protocol: rest, rules: [{ allow: { method: GET, path: "/a" } }] }
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let p = prop(
        "web_post",
        rule(
            vec![rest("api.example.com", 443, &[("POST", "/b")])],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.target_rule, "web_post");
    assert_eq!(m.policy.rule("web"), current.rule("web"));
    assert!(
        m.warnings[0].contains("undeclared ports [80]"),
        "{:?}",
        m.warnings
    );
}

// ---------------------------------------------------------------- inheritance errors

#[test]
fn a_new_binary_may_not_inherit_the_named_rules_other_endpoints() {
    let current = policy(
        r#"
  tools:
    endpoints: [{ host: a.example.com, port: 443 }, { host: b.example.com, port: 443 }]
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let p = prop("tools", rule(vec![l4("a.example.com", 443)], &[WGET]));
    let e = add_err(&current, &p);
    assert_eq!(
        e,
        MergeError::NewBinaryWouldInheritAuthorization {
            rule: "tools".into(),
            binary: WGET.into(),
            host: "b.example.com".into(),
            ports: vec![443],
        }
    );
    assert!(e.is_precondition());
    assert!(e.to_string().contains("declare that endpoint too"), "{e}");
}

#[test]
fn a_new_binary_may_not_inherit_more_l7_rules_than_it_declares() {
    let current = policy(GITHUB);
    let p = prop(
        "github",
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/a/b")])],
            &[WGET],
        ),
    );
    assert!(matches!(
        add_err(&current, &p),
        MergeError::NewBinaryWouldInheritAuthorization { .. }
    ));
    // Declaring what the endpoint allows is enough.
    let p = prop(
        "github",
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/**")])],
            &[CURL, WGET],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.grant.binaries, vec![WGET.to_string()]);
}

#[test]
fn existing_binaries_may_not_inherit_a_new_endpoint() {
    let current = policy(GITHUB);
    let p = prop(
        "github",
        rule(
            vec![
                rest("api.github.com", 443, &[("GET", "/repos/**")]),
                l4("uploads.github.com", 443),
            ],
            &[WGET],
        ),
    );
    let e = add_err(&current, &p);
    assert_eq!(
        e,
        MergeError::ExistingBinariesWouldInheritAuthorization {
            rule: "github".into(),
            host: "uploads.github.com".into(),
            ports: vec![443],
            undeclared_binaries: vec![CURL.into()],
        }
    );
    assert!(e.is_precondition());
}

#[test]
fn a_change_may_not_reach_undeclared_ports_of_the_named_rule() {
    let current = policy(
        r#"
  web:
    endpoints:
      - { host: api.example.com, ports: [80, 443], protocol: rest, rules: [{ allow: { method: GET, path: "/a" } }] }
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let p = prop(
        "web",
        rule(
            vec![rest("api.example.com", 443, &[("POST", "/b")])],
            &[CURL],
        ),
    );
    assert_eq!(
        add_err(&current, &p),
        MergeError::UndeclaredPortWouldChange {
            rule: "web".into(),
            host: "api.example.com".into(),
            ports: vec![80],
        }
    );
    // Naming both ports is fine.
    let mut both = rest("api.example.com", 443, &[("POST", "/b")]);
    both["ports"] = json!([80, 443]);
    let m = add(&current, &prop("web", rule(vec![both], &[CURL])));
    assert_eq!(m.grant.endpoint_changes.len(), 1);
}

#[test]
fn any_binary_rules_and_named_binary_rules_do_not_mix() {
    let current = policy(
        r#"
  open:
    endpoints: [{ host: a.example.com, port: 443 }]
  named:
    endpoints: [{ host: b.example.com, port: 443 }]
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let e = add_err(
        &current,
        &prop("open", rule(vec![l4("c.example.com", 443)], &[CURL])),
    );
    assert!(matches!(e, MergeError::BinaryScopeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("allows any binary"), "{e}");
    let e = add_err(
        &current,
        &prop("named", rule(vec![l4("c.example.com", 443)], &[])),
    );
    assert!(e.to_string().contains("would open it to any binary"), "{e}");
    assert!(e.is_precondition());
    // Any into any is an ordinary merge.
    let m = add(
        &current,
        &prop("open", rule(vec![l4("c.example.com", 443)], &[])),
    );
    assert_eq!(m.policy.rule("open").map(|r| r.endpoints.len()), Some(2));
}

// ---------------------------------------------------------------- endpoint merge

#[test]
fn an_access_preset_is_expanded_before_rules_are_appended() {
    let current = policy(
        r#"
  pypi:
    endpoints: [{ host: pypi.org, port: 443, protocol: rest, access: read-only }]
    binaries: [{ path: /usr/bin/pip }]
"#,
    );
    let p = prop(
        "pypi",
        rule(
            vec![rest("pypi.org", 443, &[("POST", "/legacy/")])],
            &["/usr/bin/pip"],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(
        allow_rules(&m.policy, "pypi", 0),
        pairs(&[
            ("GET", "**"),
            ("HEAD", "**"),
            ("OPTIONS", "**"),
            ("POST", "/legacy/")
        ])
    );
    assert!(endpoint_json(&m.policy, "pypi", 0).get("access").is_none());
    assert!(
        m.warnings[0].starts_with("ExpandedAccessPreset: "),
        "{:?}",
        m.warnings
    );
    assert_eq!(
        m.grant.endpoint_changes[0].expanded_access.as_deref(),
        Some("read-only")
    );
}

#[test]
fn duplicates_are_not_added_again() {
    let current = policy(GITHUB);
    let same = prop(
        "github",
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/**")])],
            &[CURL],
        ),
    );
    let m = add(&current, &same);
    assert_eq!(m.policy.hash(), current.hash());
    assert!(m.grant.is_empty(), "{:?}", m.grant);

    // A rule the preset already holds does not expand the preset.
    let current = policy(
        r#"
  pypi:
    endpoints: [{ host: pypi.org, port: 443, protocol: rest, access: read-only }]
    binaries: [{ path: /usr/bin/pip }]
"#,
    );
    let p = prop(
        "pypi",
        rule(
            vec![rest("pypi.org", 443, &[("GET", "**")])],
            &["/usr/bin/pip"],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.policy.hash(), current.hash());
    assert!(m.grant.is_empty());
}

#[test]
fn deny_rules_and_allowed_ips_are_appended_uniquely() {
    let current = policy(
        r#"
  db:
    endpoints:
      - host: api.internal.example
        port: 443
        protocol: rest
        access: full
        deny_rules: [{ method: DELETE, path: "/x" }]
        allowed_ips: ["10.0.0.0/24"]
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let p = prop(
        "db",
        rule(
            vec![json!({
                "host": "api.internal.example", "port": 443, "protocol": "rest", "access": "full",
                "deny_rules": [{ "method": "DELETE", "path": "/x" }, { "method": "PUT", "path": "/y" }],
                "allowed_ips": ["10.0.0.0/24", "10.1.0.0/24"],
                "allow_encoded_slash": true,
            })],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    let ep = endpoint_json(&m.policy, "db", 0);
    assert_eq!(
        ep["deny_rules"],
        json!([{ "method": "DELETE", "path": "/x" }, { "method": "PUT", "path": "/y" }])
    );
    assert_eq!(ep["allowed_ips"], json!(["10.0.0.0/24", "10.1.0.0/24"]));
    assert_eq!(ep["allow_encoded_slash"], json!(true));
    let change = &m.grant.endpoint_changes[0];
    assert_eq!(
        change.deny_rules,
        vec![json!({ "method": "PUT", "path": "/y" })]
    );
    assert_eq!(change.allowed_ips, vec!["10.1.0.0/24".to_string()]);
    assert_eq!(change.flags, vec!["allow_encoded_slash".to_string()]);
}

#[test]
fn existing_settings_win_with_warnings() {
    let current = policy(
        r#"
  raw:
    endpoints: [{ host: api.example.com, port: 443, tls: skip }]
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let p = prop(
        "raw",
        rule(
            vec![rest("api.example.com", 443, &[("GET", "/x")])],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.policy.hash(), current.hash());
    assert!(
        m.warnings
            .iter()
            .any(|w| w.starts_with("ExistingProtocolRetained: ")),
        "{:?}",
        m.warnings
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.starts_with("ExistingTlsRetained: ")),
        "{:?}",
        m.warnings
    );

    let current = policy(
        r#"
  gh:
    endpoints: [{ host: api.github.com, port: 443, protocol: rest, access: read-only, enforcement: audit }]
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let mut ep = rest("api.github.com", 443, &[]);
    ep.as_object_mut().map(|o| o.remove("rules"));
    ep["access"] = json!("read-write");
    let m = add(&current, &prop("gh", rule(vec![ep], &[CURL])));
    assert_eq!(m.policy.hash(), current.hash());
    assert!(
        m.warnings
            .iter()
            .any(|w| w.starts_with("ExistingAccessRetained: ")),
        "{:?}",
        m.warnings
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.starts_with("ExistingEnforcementRetained: ")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn an_endpoint_with_other_ports_or_path_is_appended() {
    let current = policy(GITHUB);
    let mut scoped = rest("api.github.com", 443, &[("GET", "/v3/**")]);
    scoped["path"] = json!("/v3/**");
    let p = prop(
        "github",
        rule(
            vec![rest("api.github.com", 8443, &[("GET", "/x")]), scoped],
            &[CURL],
        ),
    );
    let m = add(&current, &p);
    assert_eq!(m.policy.rule("github").map(|r| r.endpoints.len()), Some(3));
    assert_eq!(m.grant.endpoints.len(), 2);
}

#[test]
fn two_l7_protocols_on_one_host_and_port_conflict() {
    let current = policy(GITHUB);
    let ws = json!({ "host": "api.github.com", "port": 443, "protocol": "websocket", "access": "read-only" });
    let e = add_err(&current, &prop("github", rule(vec![ws.clone()], &[CURL])));
    assert_eq!(
        e,
        MergeError::ConflictingInspection {
            host: "api.github.com".into(),
            port: 443,
            path: None,
            protocols: vec!["rest".into(), "websocket".into()],
        }
    );
    assert!(e.is_precondition());
    // In another rule too: inspection is per host and port, not per rule.
    let e = add_err(&current, &prop("sockets", rule(vec![ws], &[WGET])));
    assert!(matches!(e, MergeError::ConflictingInspection { .. }), "{e}");
    // A different path scope may use another protocol.
    let scoped = json!({ "host": "api.github.com", "port": 443, "path": "/ws/**", "protocol": "websocket", "access": "read-only" });
    assert!(add_rule(&current, &prop("sockets", rule(vec![scoped], &[WGET]))).is_ok());
}

#[test]
fn a_conflict_already_in_the_policy_does_not_block_unrelated_merges() {
    let current = policy(
        r#"
  a:
    endpoints: [{ host: api.example.com, port: 443, protocol: rest, access: full }]
  b:
    endpoints: [{ host: api.example.com, port: 443, protocol: websocket, access: full }]
"#,
    );
    let m = add(
        &current,
        &prop("c", rule(vec![l4("other.example.com", 443)], &[CURL])),
    );
    assert_eq!(m.target_rule, "c");
}

#[test]
fn an_invalid_candidate_is_reported_and_nothing_changes() {
    // Each rule alone is valid; together they pass the size limit.
    let long_path = format!("/{}", "p".repeat(900));
    let many = |prefix: &str, n: usize| -> Json {
        let endpoints: Vec<Json> = (0..n)
            .map(|i| {
                rest(
                    &format!("{prefix}{i}.example.com"),
                    443,
                    &[("GET", long_path.as_str())],
                )
            })
            .collect();
        rule(endpoints, &[CURL])
    };
    let mut rules = serde_json::Map::new();
    rules.insert("big".into(), many("a", 200));
    let doc = json!({ "version": 1, "network_policies": rules });
    let current = Policy::parse("big.json", &doc.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let before = current.hash().to_string();
    let e = add_err(&current, &prop("more", many("b", 200)));
    assert!(matches!(e, MergeError::CandidateInvalid(_)), "{e}");
    assert!(
        e.to_string().starts_with("candidate invalid: document: "),
        "{e}"
    );
    assert!(e.is_precondition());
    assert_eq!(current.hash(), before);
}

// ---------------------------------------------------------------- covers

#[test]
fn covers_after_add_rule_but_not_a_broader_proposal() {
    let current = policy(GITHUB);
    let p = prop(
        "gh_issues",
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[("POST", "/repos/*/*/issues")],
            )],
            &[CURL],
        ),
    );
    assert!(!covers(&current, &p));
    let m = add(&current, &p);
    assert!(covers(&m.policy, &p));

    let broader = [
        rule(
            vec![rest("api.github.com", 443, &[("PUT", "/repos/*/*/issues")])],
            &[CURL],
        ),
        rule(
            vec![rest("api.github.com", 443, &[("POST", "/orgs/*/issues")])],
            &[CURL],
        ),
        rule(
            vec![rest("api.github.com", 443, &[("POST", "/repos/**")])],
            &[CURL],
        ),
        rule(
            vec![rest(
                "api.github.com",
                8443,
                &[("POST", "/repos/*/*/issues")],
            )],
            &[CURL],
        ),
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[("POST", "/repos/*/*/issues")],
            )],
            &[CURL, WGET],
        ),
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[("POST", "/repos/*/*/issues")],
            )],
            &[],
        ),
        rule(vec![l4("api.github.com", 443)], &[CURL]),
    ];
    for (i, b) in broader.into_iter().enumerate() {
        assert!(!covers(&m.policy, &prop("x", b)), "broader proposal {i}");
    }
    // Narrower ones are covered.
    for narrower in [
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/a/b")])],
            &[CURL],
        ),
        rule(
            vec![rest("api.github.com", 443, &[("HEAD", "/repos/a/b")])],
            &[CURL],
        ),
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/*/issues")])],
            &[CURL],
        ),
    ] {
        assert!(
            covers(&m.policy, &prop("x", narrower.clone())),
            "{narrower}"
        );
    }
}

#[test]
fn covers_checks_deny_rules_enforcement_and_tls() {
    let current = policy(GITHUB);
    let mut with_deny = rest("api.github.com", 443, &[("GET", "/repos/**")]);
    with_deny["deny_rules"] = json!([{ "method": "GET", "path": "/repos/secret/**" }]);
    let p = prop("github", rule(vec![with_deny], &[CURL]));
    assert!(!covers(&current, &p));
    assert!(covers(&add(&current, &p).policy, &p));

    let mut audit = rest("api.github.com", 443, &[("GET", "/repos/**")]);
    audit["enforcement"] = json!("audit");
    assert!(!covers(&current, &prop("x", rule(vec![audit], &[CURL]))));
    let mut skip = l4("api.github.com", 443);
    skip["tls"] = json!("skip");
    assert!(!covers(
        &policy("  r:\n    endpoints: [{host: api.github.com, port: 443}]\n"),
        &prop("x", rule(vec![skip], &[]))
    ));
}

#[test]
fn covers_with_a_wildcard_host_and_binary_glob() {
    let current = policy(
        r#"
  wide:
    endpoints: [{ host: "*.example.com", port: 443 }]
    binaries: [{ path: "/sandbox/.venv/bin/*" }]
"#,
    );
    let venv = "/sandbox/.venv/bin/python";
    assert!(covers(
        &current,
        &prop("x", rule(vec![l4("api.example.com", 443)], &[venv]))
    ));
    assert!(!covers(
        &current,
        &prop("x", rule(vec![l4("example.com", 443)], &[venv]))
    ));
    assert!(!covers(
        &current,
        &prop("x", rule(vec![l4("a.b.example.com", 443)], &[venv]))
    ));
    assert!(!covers(
        &current,
        &prop("x", rule(vec![l4("api.example.com", 443)], &[CURL]))
    ));
    assert!(!covers(
        &current,
        &prop(
            "x",
            rule(
                vec![l4("api.example.com", 443)],
                &["/sandbox/.venv/bin/sub/python"]
            )
        )
    ));
}

#[test]
fn covers_any_binary_only_with_an_any_binary_rule() {
    let named = policy(
        "  r:\n    endpoints: [{host: a.example.com, port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n",
    );
    let open = policy("  r:\n    endpoints: [{host: a.example.com, port: 443}]\n");
    let any = prop("x", rule(vec![l4("a.example.com", 443)], &[]));
    assert!(!covers(&named, &any));
    assert!(covers(&open, &any));
    // Any-binary rules cover every named binary.
    assert!(covers(
        &open,
        &prop("x", rule(vec![l4("a.example.com", 443)], &[CURL]))
    ));
}

#[test]
fn an_l4_proposal_needs_l4_or_full_access() {
    let read_only = policy(
        "  r:\n    endpoints: [{host: a.example.com, port: 443, protocol: rest, access: read-only}]\n",
    );
    let full = policy(
        "  r:\n    endpoints: [{host: a.example.com, port: 443, protocol: rest, access: full}]\n",
    );
    let plain = prop("x", rule(vec![l4("a.example.com", 443)], &[]));
    assert!(!covers(&read_only, &plain));
    assert!(covers(&full, &plain));
    // And an L4 endpoint already allows what an L7 proposal asks for.
    let l4_policy = policy("  r:\n    endpoints: [{host: a.example.com, port: 443}]\n");
    assert!(covers(
        &l4_policy,
        &prop(
            "x",
            rule(vec![rest("a.example.com", 443, &[("POST", "/x")])], &[])
        )
    ));
}

// ---------------------------------------------------------------- revoke

#[test]
fn revoke_after_add_rule_restores_the_original_exactly() {
    let base = policy(
        r#"
  github:
    endpoints:
      - { host: api.github.com, port: 443, protocol: rest, access: read-only, allowed_ips: ["10.9.0.0/24"] }
    binaries: [{ path: /usr/bin/curl }]
"#,
    );
    let proposals = [
        prop(
            "new_rule",
            rule(
                vec![rest("pypi.org", 443, &[("GET", "/simple/**")])],
                &["/usr/bin/pip"],
            ),
        ),
        prop(
            "github",
            rule(
                vec![rest(
                    "api.github.com",
                    443,
                    &[("POST", "/repos/*/*/issues")],
                )],
                &[CURL],
            ),
        ),
        prop(
            "github",
            rule(
                vec![
                    json!({
                        "host": "api.github.com", "port": 443, "protocol": "rest", "access": "read-only",
                        "deny_rules": [{ "method": "GET", "path": "/admin/**" }],
                        "allowed_ips": ["10.9.0.0/24", "10.8.0.0/24"], "allow_encoded_slash": true,
                    }),
                    l4("uploads.github.com", 443),
                ],
                &[CURL],
            ),
        ),
        // A new binary declaring everything the endpoint grants.
        prop(
            "github",
            rule(
                vec![with_ips(
                    rest(
                        "api.github.com",
                        443,
                        &[("GET", "**"), ("HEAD", "**"), ("OPTIONS", "**")],
                    ),
                    &["10.9.0.0/24"],
                )],
                &[CURL, WGET],
            ),
        ),
    ];
    for p in &proposals {
        let m = add(&base, p);
        assert_ne!(m.policy.hash(), base.hash(), "{}", p.canonical);
        let undone = revoke(&m.policy, &m.grant).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            undone.canonical_json(),
            base.canonical_json(),
            "grant {:?}",
            m.grant
        );
        assert_eq!(undone.hash(), base.hash());
    }
}

#[test]
fn revoke_leaves_what_a_later_grant_added() {
    let base = empty();
    let first = prop(
        "gh",
        rule(vec![rest("api.github.com", 443, &[("GET", "/a")])], &[CURL]),
    );
    let second = prop(
        "gh",
        rule(
            vec![
                rest("api.github.com", 443, &[("POST", "/b")]),
                l4("uploads.github.com", 443),
            ],
            &[CURL],
        ),
    );
    let m1 = add(&base, &first);
    let m2 = add(&m1.policy, &second);

    // Undo in reverse order: exact.
    let undo2 = revoke(&m2.policy, &m2.grant).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(undo2.hash(), m1.policy.hash());
    assert_eq!(
        revoke(&undo2, &m1.grant).map(|p| p.hash().to_string()),
        Ok(base.hash().to_string())
    );

    // Undo the first while the second stays: only the first's parts go.
    let undo1 = revoke(&m2.policy, &m1.grant).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(allow_rules(&undo1, "gh", 0), pairs(&[("POST", "/b")]));
    assert_eq!(undo1.rule("gh").map(|r| r.endpoints.len()), Some(2));
    assert_eq!(
        undo1.rule("gh").map(|r| r.binaries.clone()),
        Some(vec![CURL.to_string()])
    );
    assert!(covers(&undo1, &second));
    assert!(!covers(&undo1, &first));
}

#[test]
fn revoke_of_a_grant_into_an_existing_rule_removes_only_what_it_added() {
    let base = policy(GITHUB);
    let p = prop(
        "github",
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[("GET", "/repos/**"), ("POST", "/repos/*/*/pulls")],
            )],
            &[CURL, WGET],
        ),
    );
    let m = add(&base, &p);
    assert_eq!(m.grant.binaries, vec![WGET.to_string()]);
    // Something else adds a rule afterwards.
    let later = prop(
        "github",
        rule(
            vec![rest(
                "api.github.com",
                443,
                &[
                    ("GET", "/repos/**"),
                    ("POST", "/repos/*/*/pulls"),
                    ("PUT", "/x"),
                ],
            )],
            &[CURL, WGET],
        ),
    );
    let m2 = add(&m.policy, &later);
    let undone = revoke(&m2.policy, &m.grant).unwrap_or_else(|e| panic!("{e}"));
    let gh = undone.rule("github").unwrap_or_else(|| panic!("rule kept"));
    assert_eq!(gh.binaries, vec![CURL.to_string()]);
    assert_eq!(
        allow_rules(&undone, "github", 0),
        pairs(&[("GET", "/repos/**"), ("PUT", "/x")])
    );
}

#[test]
fn revoke_never_widens_a_rule_to_any_binary() {
    // The grant added the rule's only binary to a rule that had lost its
    // others: removing it would leave `binaries` empty (any binary).
    let base = policy(GITHUB);
    let p = prop(
        "github",
        rule(
            vec![rest("api.github.com", 443, &[("GET", "/repos/**")])],
            &[CURL, WGET],
        ),
    );
    let m = add(&base, &p);
    let mut doc = m.policy.canonical_json();
    doc["network_policies"]["github"]["binaries"] = json!([{ "path": WGET }]);
    let edited = Policy::parse("edited", &doc.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let undone = revoke(&edited, &m.grant).unwrap_or_else(|e| panic!("{e}"));
    assert!(undone.rule("github").is_none());
}

#[test]
fn revoke_ignores_parts_that_are_already_gone() {
    let base = policy(GITHUB);
    let m = add(
        &base,
        &prop("pypi", rule(vec![l4("pypi.org", 443)], &["/usr/bin/pip"])),
    );
    let undone = revoke(&base, &m.grant).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(undone.hash(), base.hash());
}

#[test]
fn grant_serde_round_trip() {
    let base = policy(
        r#"
  pypi:
    endpoints: [{ host: pypi.org, port: 443, protocol: rest, access: read-only }]
    binaries: [{ path: /usr/bin/pip }]
"#,
    );
    let p = prop(
        "pypi",
        rule(
            vec![
                rest(
                    "pypi.org",
                    443,
                    &[
                        ("GET", "**"),
                        ("HEAD", "**"),
                        ("OPTIONS", "**"),
                        ("POST", "/legacy/"),
                    ],
                ),
                l4("files.pythonhosted.org", 443),
            ],
            &["/usr/bin/pip", CURL],
        ),
    );
    let grant = add(&base, &p).grant;
    let text = serde_json::to_string(&grant).unwrap_or_else(|e| panic!("{e}"));
    let back: Grant = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, grant);
    let value = serde_json::to_value(&grant).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value["rule"], json!("pypi"));
    assert_eq!(value["created_rule"], json!(false));
    assert_eq!(value["binaries"], json!([CURL]));
    assert_eq!(
        value["endpoint_changes"][0]["expanded_access"],
        json!("read-only")
    );
    // Stable: the same grant always serialises the same way.
    assert_eq!(serde_json::to_string(&back).ok(), Some(text));
}
