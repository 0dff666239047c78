//! Providers end to end: credentials registered on the host reach the
//! upstream they are bound to, and only that upstream. The sandbox holds
//! placeholders; the stand-in for api.github.com reports the
//! Authorization header it received.

use portcullis_e2e::{RestFixture, privileged, secret_sightings, stdout};
use serde_json::Value;

const UPSTREAM: &str = env!("CARGO_BIN_EXE_e2e-upstream");
const SECRET: &str = "ghp_e2eSecretValue0123456789";
const ROTATED: &str = "ghp_e2eRotatedValue9876543210";

/// curl, python and node may use api.github.com through the user policy
/// too; other.example.test is allowed but holds no credentials; port 80
/// is allowed in plain HTTP.
const POLICY: &str = "version: 1
network_policies:
  github_users:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        access: read-write
      - host: api.github.com
        port: 80
        protocol: rest
        access: read-write
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/python3*
      - path: /usr/bin/node
  other:
    endpoints:
      - host: other.example.test
        port: 443
        protocol: rest
        access: read-write
    binaries:
      - path: /usr/bin/curl
";

fn fixture(name: &str, index: u16) -> RestFixture {
    RestFixture::serving(
        UPSTREAM,
        name,
        index,
        POLICY,
        &[],
        &["api.github.com", "other.example.test"],
        (443, 80),
    )
}

/// Runs `script` with `sh -c` in the sandbox; returns (stdout, stderr).
fn sh(f: &RestFixture, script: &str) -> (String, String) {
    let out = f.agent.run_in("demo", &["sh", "-c", script]);
    (
        stdout(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Everything a person or an agent could read: logs, agent stderr, the
/// CLI's answers, the store's files.
fn assert_nowhere(f: &RestFixture, outputs: &[String], secret: &str) {
    for (i, text) in outputs.iter().enumerate() {
        assert!(
            !text.contains(secret),
            "output {i} leaks the secret: {text}"
        );
    }
    let seen = secret_sightings(&f.agent.root, &f.agent.stderr_lines(), secret);
    assert!(seen.is_empty(), "the secret shows: {seen:#?}");
}

#[test]
fn credentials_reach_only_their_bound_host_and_rotate() {
    if !privileged() {
        return;
    }
    let f = fixture("providers", 40);
    let agent = &f.agent;
    let mut outputs = Vec::new();
    let secret_file = agent.root.join("token");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    outputs.push(agent.ok(&[
        "provider",
        "create",
        "gh",
        "--type",
        "github",
        "--credential",
        "GITHUB_TOKEN",
        "--from-file",
        secret_file.to_str().unwrap(),
    ]));
    std::fs::remove_file(&secret_file).unwrap();
    outputs.push(agent.ok(&["sandbox", "provider", "attach", "demo", "gh"]));
    let again = agent.ok(&["sandbox", "provider", "attach", "demo", "gh"]);
    assert!(again.contains("already attached"), "{again}");
    outputs.push(again);
    let listed = agent.ok(&["provider", "get", "gh"]);
    assert!(
        listed.contains("GITHUB_TOKEN") && listed.contains("api.github.com:443"),
        "{listed}"
    );
    outputs.push(listed);
    outputs.push(agent.ok(&["provider", "list"]));
    outputs.push(agent.ok(&["sandbox", "provider", "list", "demo"]));
    let policy = agent.ok(&["policy", "get", "demo", "--full"]);
    assert!(
        policy.contains("_provider_gh"),
        "the provider's rule is composed in: {policy}"
    );
    outputs.push(policy);

    // The sandbox sees a placeholder.
    let (env, _) = sh(&f, "echo $GITHUB_TOKEN");
    assert_eq!(env.trim(), "openshell:resolve:env:GITHUB_TOKEN");

    // curl, python and node: the real token arrives.
    let (out, err) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user"#,
    );
    assert_eq!(
        json(&out)["authorization"],
        format!("Bearer {SECRET}"),
        "{err}"
    );
    let (out, err) = sh(
        &f,
        r#"/usr/bin/python3 -c 'import os,urllib.request as u; r=u.Request("https://api.github.com/user", headers={"Authorization": "token "+os.environ["GITHUB_TOKEN"]}); print(u.urlopen(r).read().decode())'"#,
    );
    assert_eq!(
        json(&out)["authorization"],
        format!("token {SECRET}"),
        "{err}"
    );
    let (out, err) = sh(
        &f,
        r#"node -e 'require("https").get("https://api.github.com/user", {headers: {authorization: "Bearer " + process.env.GITHUB_TOKEN}}, r => { let b = ""; r.on("data", d => b += d); r.on("end", () => console.log(b)); })'"#,
    );
    assert_eq!(
        json(&out)["authorization"],
        format!("Bearer {SECRET}"),
        "{err}"
    );

    // In the path and the query.
    let (out, _) = sh(
        &f,
        r#"curl -sS "https://api.github.com/repos/$GITHUB_TOKEN/x?access_token=$GITHUB_TOKEN""#,
    );
    let seen = json(&out);
    assert_eq!(seen["path"], format!("/repos/{SECRET}/x"));
    assert_eq!(seen["query"], format!("access_token={SECRET}"));

    // Toward another allowed host: refused, the upstream never asked.
    let (out, _) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" https://other.example.test/"#,
    );
    let refused = json(&out);
    assert_eq!(refused["error"], "credential_endpoint_mismatch", "{out}");
    outputs.push(out);
    let finding = agent
        .wait_event(portcullis_e2e::WAIT, |e| e["class_uid"] == 2004)
        .expect("a detection finding is written");
    assert_eq!(finding["unmapped"]["credential_key"], "GITHUB_TOKEN");
    assert_eq!(finding["unmapped"]["provider"], "gh");
    assert_eq!(finding["disposition_id"], 2);
    // Plain HTTP never carries it.
    let (out, _) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" http://api.github.com/user"#,
    );
    assert_eq!(json(&out)["error"], "credential_endpoint_mismatch", "{out}");
    outputs.push(out);
    // An unknown placeholder fails closed.
    let (out, _) = sh(
        &f,
        r#"curl -sS -w '\n%{http_code}' -H "Authorization: Bearer openshell:resolve:env:NOPE" https://api.github.com/user"#,
    );
    assert!(
        out.ends_with("500") && out.contains("credential_unavailable"),
        "{out}"
    );
    outputs.push(out);

    // Rotation: the next request carries the new value.
    outputs.push(agent.ok(&[
        "provider",
        "update",
        "gh",
        "--credential",
        &format!("GITHUB_TOKEN={ROTATED}"),
    ]));
    let (out, _) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user"#,
    );
    assert_eq!(json(&out)["authorization"], format!("Bearer {ROTATED}"));

    // Nothing a person or an agent can read holds either value.
    for route in [
        "/v1/policy/current",
        "/v1/denials?last=100",
        "/v1/providers",
    ] {
        let (out, _) = sh(&f, &format!("curl -sS http://policy.local{route}"));
        outputs.push(out);
    }
    outputs.push(agent.ok(&["logs", "demo"]));
    agent
        .wait_event(portcullis_e2e::WAIT, |e| {
            e["class_uid"] == 4002 && e["action_id"] == 2
        })
        .expect("the mismatch is audited");
    assert_nowhere(&f, &outputs, SECRET);
    assert_nowhere(&f, &outputs, ROTATED);

    // Detached: the placeholder resolves nowhere, and delete is allowed.
    agent.ok(&["sandbox", "provider", "detach", "demo", "gh"]);
    let (out, _) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer openshell:resolve:env:GITHUB_TOKEN" https://api.github.com/user"#,
    );
    assert_eq!(json(&out)["error"], "credential_unavailable", "{out}");
    agent.ok(&["provider", "delete", "gh"]);
}

/// `curl` to policy.local with an optional JSON body; the answer parsed.
fn local(f: &RestFixture, sandbox: &str, method: &str, route: &str, body: Option<&Value>) -> Value {
    let mut argv = vec![
        "curl".to_string(),
        "-sS".into(),
        "-X".into(),
        method.into(),
        format!("http://policy.local{route}"),
    ];
    if let Some(body) = body {
        argv.extend(["-H".into(), "content-type: application/json".into()]);
        argv.extend(["--data-binary".into(), body.to_string()]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    json(&stdout(&f.agent.run_in(sandbox, &argv)))
}

#[test]
fn an_agent_asks_for_a_provider_and_gets_it_after_approval() {
    if !privileged() {
        return;
    }
    let f = fixture("providers-request", 41);
    let agent = &f.agent;
    agent.ok(&[
        "provider",
        "create",
        "gh",
        "--type",
        "github",
        "--credential",
        &format!("GITHUB_TOKEN={SECRET}"),
    ]);
    let none = local(&f, "demo", "GET", "/v1/providers", None);
    assert_eq!(none, serde_json::json!({"providers": []}));

    let ask = serde_json::json!({"intent_summary": "push the release notes",
        "operations": [{"requestProvider": {"providerName": "gh", "providerType": "github"}}]});
    let reply = local(&f, "demo", "POST", "/v1/proposals", Some(&ask));
    assert_eq!(reply["accepted_chunks"], 1, "{reply}");
    let id = reply["accepted_chunk_ids"][0].as_str().unwrap().to_string();
    let pending = agent.ok(&["rule", "get", "demo", "--status", "pending"]);
    for needle in [
        "Rule:        request_provider_gh",
        "Provider:    attach 'gh' (github) to the sandbox",
        "credential_reach_expansion: api.github.com:443",
        "api.github.com:443 [L7 rest, access=read-write]",
    ] {
        assert!(pending.contains(needle), "{needle:?} not in:\n{pending}");
    }
    assert!(!pending.contains(SECRET));
    agent.ok(&["rule", "approve", "demo", "--chunk-id", &id]);
    let wait = local(
        &f,
        "demo",
        "GET",
        &format!("/v1/proposals/{id}/wait?timeout=10"),
        None,
    );
    assert_eq!(wait["status"], "approved", "{wait}");
    assert_eq!(wait["policy_reloaded"], true);
    let listed = local(&f, "demo", "GET", "/v1/providers", None);
    assert_eq!(
        listed,
        serde_json::json!({"providers": [{"name": "gh", "type": "github", "credential_keys": ["GITHUB_TOKEN"]}]})
    );
    let (out, err) = sh(
        &f,
        r#"curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user"#,
    );
    assert_eq!(
        json(&out)["authorization"],
        format!("Bearer {SECRET}"),
        "{err}"
    );

    // A host that carries credentials is never tunnelled uninspected: a
    // sandbox whose policy says `tls: skip` for it is refused, in-band.
    let skip = agent.write_policy(
        "skip.yaml",
        "version: 1
network_policies:
  raw_tunnel:
    endpoints:
      - host: api.github.com
        port: 443
        tls: skip
    binaries:
      - path: /usr/bin/curl
",
    );
    agent.ok(&[
        "sandbox",
        "create",
        "skipper",
        "--policy",
        skip.to_str().unwrap(),
    ]);
    agent.ok(&["sandbox", "provider", "attach", "skipper", "gh"]);
    let out = agent.run_in("skipper", &["curl", "-sS", "https://api.github.com/user"]);
    let refused = json(&stdout(&out));
    assert_eq!(refused["error"], "uninspected_credentials", "{refused}");
    assert!(
        refused
            .to_string()
            .contains("allow_uninspected_credentials"),
        "the answer names the fix: {refused}"
    );

    // Auto mode holds a credentialed capability expansion for a person.
    agent.ok(&["sandbox", "approval-mode", "demo", "auto"]);
    let delete = serde_json::json!({"operations": [{"addRule": {"ruleName": "repo_delete", "rule": {
        "endpoints": [{"host": "api.github.com", "port": 443, "protocol": "rest",
                       "rules": [{"allow": {"method": "DELETE", "path": "/repos/o/r"}}]}],
        "binaries": [{"path": "/usr/bin/curl"}]}}}]});
    let reply = local(&f, "demo", "POST", "/v1/proposals", Some(&delete));
    let id = reply["accepted_chunk_ids"][0].as_str().unwrap().to_string();
    let wait = local(
        &f,
        "demo",
        "GET",
        &format!("/v1/proposals/{id}/wait?timeout=1"),
        None,
    );
    assert_eq!(wait["status"], "pending", "{wait}");
    assert_eq!(wait["timed_out"], true);
    assert!(
        wait["validation_result"]
            .as_str()
            .unwrap()
            .contains("capability_expansion: DELETE on api.github.com:443 via /usr/bin/curl"),
        "{wait}"
    );
}
