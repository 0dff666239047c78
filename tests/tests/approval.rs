//! The approval loop end to end (reference §10.1, no model): a scripted
//! agent in a sandbox hits a 403, reads the skill and its policy, proposes
//! the narrowest rule through `policy.local` and waits; the test approves
//! or rejects from the CLI, and the agent's retry succeeds. Real agent,
//! real sandbox, real TLS to a local stand-in for a REST API.

use std::time::Duration;

use portcullis_e2e::{Agent, RestFixture, WAIT, privileged, stdout, wait_for_line};
use serde_json::{Value, json};

const UPSTREAM: &str = env!("CARGO_BIN_EXE_e2e-upstream");
const SCRIPT: &str = include_str!("../scripts/scripted_agent.py");
const PYTHON: &str = "/usr/bin/python3";

const READ_ONLY: &str = "version: 1
network_policies:
  github_ro:
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/python3*
";

/// The scripted agent where the sandbox user can read it.
fn install_script(agent: &Agent) -> String {
    let path = agent.root.join("scripted_agent.py");
    std::fs::write(&path, SCRIPT).unwrap();
    path.display().to_string()
}

/// The JSON lines a scripted-agent run printed, by step.
fn steps(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:#?}"))
}

/// Runs the scripted agent in sandbox `sandbox`; returns its steps.
fn script(agent: &Agent, sandbox: &str, path: &str, args: &[&str]) -> Vec<Value> {
    let mut argv = vec![PYTHON, path];
    argv.extend_from_slice(args);
    steps(&stdout(&agent.run_in(sandbox, &argv)))
}

fn raw(
    agent: &Agent,
    sandbox: &str,
    path: &str,
    method: &str,
    route: &str,
    body: Option<&str>,
) -> Value {
    let mut args = vec!["raw", method, route];
    args.extend(body);
    script(agent, sandbox, path, &args).remove(0)
}

/// The position of the first event matching `pred`.
fn position(events: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} event"))
}

fn config_label(e: &Value, label: &str) -> bool {
    e["class_uid"] == 5019 && e["unmapped"]["state_label"] == label
}

fn http_put(e: &Value, action: u64) -> bool {
    e["class_uid"] == 4002 && e["action_id"] == action && e["http_request"]["http_method"] == "PUT"
}

#[test]
fn the_whole_loop_from_denial_to_retry_and_it_survives_a_crash() {
    if !privileged() {
        return;
    }
    let mut f = RestFixture::start(UPSTREAM, "approval-loop", 30, READ_ONLY, &[]);
    let path = install_script(&f.agent);
    // The operator's inbox is pushed, not polled.
    let (mut watch, updates) = f.agent.spawn_cli(&["rule", "watch", "demo", "--json"]);
    let url = "https://api.example.test:8443/repos/o/r/contents/README.md";
    let workload = {
        let (child, lines) =
            f.agent
                .spawn_cli(&["run", "--sandbox", "demo", "--", PYTHON, &path, "loop", url]);
        (child, lines)
    };

    let proposed = wait_for_line(&updates, Duration::from_secs(60), |l| {
        l.contains("\"proposed\"")
    })
    .expect("the proposal reaches the operator's watch");
    let proposed: Value = serde_json::from_str(&proposed).unwrap();
    let chunk_id = proposed["chunk"]["id"].as_str().unwrap().to_string();
    assert_eq!(proposed["sandbox"], "demo");

    let pending = f.agent.ok(&["rule", "get", "demo", "--status", "pending"]);
    for needle in [
        "Network Rules:  (version 1, 1 chunks)",
        &format!("Chunk:       {chunk_id}"),
        "Status:      pending",
        "Rule:        contents_write",
        "Binary:      /usr/bin/python3",
        "Confidence:  75%",
        "Prover:      prover: no new findings",
        "Endpoints:   api.example.test:8443 [L7 rest, allow PUT /repos/o/r/contents/README.md]",
    ] {
        assert!(pending.contains(needle), "{needle:?} not in:\n{pending}");
    }
    let approved = f
        .agent
        .ok(&["rule", "approve", "demo", "--chunk-id", &chunk_id]);
    assert!(
        approved.starts_with("Chunk approved. Policy version: 2, hash: "),
        "{approved}"
    );

    let (mut child, lines) = workload;
    assert!(child.wait().unwrap().success(), "the scripted agent failed");
    let run: Vec<Value> = steps(&lines.try_iter().collect::<Vec<_>>().join("\n"));
    let deny = step(&run, "deny");
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["body"]["error"], "policy_denied");
    assert_eq!(deny["body"]["layer"], "l7");
    assert_eq!(deny["body"]["method"], "PUT");
    assert_eq!(step(&run, "skill")["status"], 200);
    let policy = step(&run, "policy");
    assert_eq!(policy["status"], 200);
    assert_eq!(policy["body"]["format"], "yaml");
    assert!(
        policy["body"]["policy_yaml"]
            .as_str()
            .unwrap()
            .contains("github_ro")
    );
    let submit = step(&run, "submit");
    assert_eq!(submit["status"], 202);
    assert_eq!(
        submit["body"],
        json!({"status": "submitted", "accepted_chunks": 1, "rejected_chunks": 0,
               "rejection_reasons": [], "accepted_chunk_ids": [chunk_id]})
    );
    let wait = step(&run, "wait");
    assert_eq!(wait["body"]["status"], "approved");
    assert_eq!(wait["body"]["policy_reloaded"], true);
    assert_eq!(wait["body"]["rejection_reason"], "");
    assert_eq!(step(&run, "retry")["status"], 200);

    // The audit trail, in order: DENIED -> PROPOSED -> APPROVED -> LOADED -> ALLOWED.
    f.agent
        .wait_event(WAIT, |e| http_put(e, 1))
        .expect("the retry is audited");
    let events = f.agent.events();
    let denied = position(&events, "denied PUT", |e| http_put(e, 2));
    let proposed = position(&events, "PROPOSED", |e| config_label(e, "PROPOSED"));
    let approved = position(&events, "APPROVED", |e| config_label(e, "APPROVED"));
    let loaded = position(&events, "LOADED", |e| {
        config_label(e, "loaded") && e["unmapped"]["policy_version"] == "2"
    });
    let allowed = position(&events, "allowed PUT", |e| http_put(e, 1));
    assert!(
        denied < proposed && proposed < approved && approved < loaded && loaded < allowed,
        "out of order: {denied} {proposed} {approved} {loaded} {allowed}"
    );
    assert_eq!(events[proposed]["unmapped"]["chunk_id"], chunk_id.as_str());
    let _ = watch.kill();

    // Nothing is lost in a crash: the decision, the version and the history.
    f.agent.kill();
    f.agent.spawn();
    let after: Value =
        serde_json::from_str(&f.agent.ok(&["rule", "get", "demo", "--json"])).unwrap();
    assert_eq!(after["policy_version"], 2);
    assert_eq!(after["chunks"][0]["id"], chunk_id.as_str());
    assert_eq!(after["chunks"][0]["status"], "approved");
    assert_eq!(after["chunks"][0]["approved_policy_version"], 2);
    let history = f.agent.ok(&["rule", "history", "demo"]);
    assert!(
        history.contains(" proposed [") && history.contains(" approved ["),
        "{history}"
    );
    let again = script(&f.agent, "demo", &path, &["wait", &chunk_id, "1"]);
    assert_eq!(again[0]["body"]["policy_reloaded"], true);
}

#[test]
fn rejection_bad_proposals_and_sandbox_isolation() {
    if !privileged() {
        return;
    }
    let f = RestFixture::start(UPSTREAM, "approval-reject", 31, READ_ONLY, &[]);
    let agent = &f.agent;
    let path = install_script(agent);
    let rule = json!({
        "endpoints": [{"host": "api.example.test", "port": 8443, "protocol": "rest",
                       "rules": [{"allow": {"method": "GET", "path": "/beta/**"}}]}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
    .to_string();
    let submitted = script(agent, "demo", &path, &["propose", "smoke_beta", &rule]);
    let id = submitted[0]["body"]["accepted_chunk_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let waiter = {
        let (child, lines) = agent.spawn_cli(&[
            "run",
            "--sandbox",
            "demo",
            "--",
            PYTHON,
            &path,
            "wait",
            &id,
            "60",
        ]);
        (child, lines)
    };
    let reason = "scope to docs/ paths only, not the whole repo";
    assert_eq!(
        agent
            .ok(&[
                "rule",
                "reject",
                "demo",
                "--chunk-id",
                &id,
                "--reason",
                reason
            ])
            .trim(),
        "Chunk rejected."
    );
    let (mut child, lines) = waiter;
    assert!(child.wait().unwrap().success());
    let wait = steps(&lines.try_iter().collect::<Vec<_>>().join("\n")).remove(0);
    assert_eq!(wait["body"]["status"], "rejected");
    assert_eq!(wait["body"]["rejection_reason"], reason);
    assert!(wait["body"].get("policy_reloaded").is_none());
    let status = raw(
        agent,
        "demo",
        &path,
        "GET",
        &format!("/v1/proposals/{id}"),
        None,
    );
    assert_eq!(status["body"]["status"], "rejected");
    agent
        .wait_event(WAIT, |e| config_label(e, "REJECTED"))
        .expect("the rejection is audited");

    // Bad proposals get 400 invalid_proposal naming the field.
    let op = |rule: Value| {
        json!({"operations": [{"addRule": {"ruleName": "r", "rule": rule}}]}).to_string()
    };
    let ep = |host: &str, path: &str| {
        op(
            json!({"endpoints": [{"host": host, "port": 443, "protocol": "rest",
                                  "rules": [{"allow": {"method": "GET", "path": path}}]}],
                  "binaries": [{"path": "/usr/bin/curl"}]}),
        )
    };
    for (body, field) in [
        ("{not json".to_string(), "line 1"),
        (json!({"operations": []}).to_string(), "operations"),
        (
            op(json!({"binaries": [{"path": "/usr/bin/curl"}]})),
            "endpoints",
        ),
        (ep("*.com", "/x"), "host"),
        (ep("api.example.test", "/x?token=secret"), "path"),
        (ep("169.254.169.254", "/latest"), "host"),
    ] {
        let reply = raw(agent, "demo", &path, "POST", "/v1/proposals", Some(&body));
        assert_eq!(reply["status"], 400, "{body}: {reply}");
        assert_eq!(
            reply["body"]["error"], "invalid_proposal",
            "{body}: {reply}"
        );
        let detail = reply["body"]["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{body}: {detail}");
        assert!(
            !detail.contains("secret"),
            "the query is not echoed: {detail}"
        );
    }
    let big = format!("{{\"intent_summary\": \"{}\"}}", "x".repeat(70 * 1024));
    let reply = raw(agent, "demo", &path, "POST", "/v1/proposals", Some(&big));
    assert_eq!(reply["status"], 413, "{reply}");
    assert_eq!(reply["body"]["error"], "payload_too_large");
    let reply = raw(agent, "demo", &path, "GET", "/v1/nope", None);
    assert_eq!(reply["status"], 404);
    assert_eq!(reply["body"]["error"], "not_found");
    let reply = raw(agent, "demo", &path, "GET", "/v1/proposals/x/y/z", None);
    assert_eq!(reply["body"]["error"], "not_found");

    // A denial in `demo`, then the view from another sandbox.
    let out = agent.run_in(
        "demo",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-X",
            "DELETE",
            "https://api.example.test:8443/repos/o/r?token=abc",
        ],
    );
    assert!(out.status.success());
    agent
        .wait_event(WAIT, |e| e["class_uid"] == 4002 && e["action_id"] == 2)
        .expect("the denial is audited");
    let own = raw(agent, "demo", &path, "GET", "/v1/denials?last=5", None);
    assert_eq!(own["body"]["log_available"], true);
    let lines = own["body"]["denials"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l.as_str().unwrap().contains("DELETE")),
        "{own}"
    );
    assert!(
        !own.to_string().contains("token=abc"),
        "queries are redacted"
    );

    agent.ok(&["sandbox", "create", "other"]);
    let theirs = raw(
        agent,
        "other",
        &path,
        "GET",
        &format!("/v1/proposals/{id}"),
        None,
    );
    assert_eq!(theirs["status"], 404);
    assert_eq!(theirs["body"]["error"], "chunk_not_found");
    let theirs = raw(agent, "other", &path, "GET", "/v1/denials", None);
    assert!(!theirs.to_string().contains("DELETE"), "{theirs}");
    let theirs = raw(agent, "other", &path, "GET", "/v1/policy/current", None);
    assert_eq!(theirs["status"], 404);
    assert_eq!(theirs["body"]["error"], "policy_unavailable");
}

#[test]
fn auto_mode_approves_a_clean_proposal_and_holds_a_flagged_one() {
    if !privileged() {
        return;
    }
    let f = RestFixture::start(
        UPSTREAM,
        "approval-auto",
        32,
        READ_ONLY,
        &["--approval-mode", "auto"],
    );
    let agent = &f.agent;
    let path = install_script(agent);
    let docs = json!({
        "endpoints": [{"host": "other.example.test", "port": 8443, "protocol": "rest",
                       "rules": [{"allow": {"method": "GET", "path": "/docs/**"}}]}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
    .to_string();
    let submitted = script(agent, "demo", &path, &["propose", "other_docs", &docs]);
    let id = submitted[0]["body"]["accepted_chunk_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let wait = script(agent, "demo", &path, &["wait", &id, "10"]);
    assert_eq!(wait[0]["body"]["status"], "approved", "{wait:?}");
    assert_eq!(wait[0]["body"]["policy_reloaded"], true);
    assert_eq!(
        wait[0]["body"]["validation_result"],
        "prover: no new findings"
    );
    let out = agent.run_in(
        "demo",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://other.example.test:8443/docs/a",
        ],
    );
    assert_eq!(stdout(&out), "200");
    let event = agent
        .wait_event(WAIT, |e| config_label(e, "APPROVED"))
        .expect("the auto-approval is audited");
    assert_eq!(event["unmapped"]["auto"], "true");

    // A database port is flagged: it waits for a person.
    let db = json!({
        "endpoints": [{"host": "other.example.test", "port": 5432}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
    .to_string();
    let submitted = script(agent, "demo", &path, &["propose", "other_db", &db]);
    let id = submitted[0]["body"]["accepted_chunk_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let wait = script(agent, "demo", &path, &["wait", &id, "1"]);
    assert_eq!(wait[0]["body"]["status"], "pending");
    assert_eq!(wait[0]["body"]["timed_out"], true);
    let pending = agent.ok(&["rule", "get", "demo", "--status", "pending"]);
    assert!(
        pending.contains("Security:") && pending.contains("5432"),
        "{pending}"
    );
}

/// A CA and a certificate it signs, made with openssl (`ext` is the
/// extension text: SAN and extended key usage).
fn openssl_cert(dir: &std::path::Path, ca: &str, name: &str, ext: &str) {
    let script = format!(
        "set -e; cd {dir}
         [ -f {ca}.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout {ca}.key -out {ca}.pem -days 1 -subj /CN={ca} \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
            -out {name}.csr -subj /CN={name} 2>/dev/null
         printf '{ext}' > {name}.ext
         openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
            -out {name}.pem -days 1 -extfile {name}.ext 2>/dev/null",
        dir = dir.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn remote_operators_need_a_certificate_from_the_operator_ca() {
    if !privileged() {
        return;
    }
    let dir = std::path::PathBuf::from("/tmp/portcullis-e2e/approval-remote-certs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    openssl_cert(
        &dir,
        "server-ca",
        "server",
        "subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n",
    );
    openssl_cert(&dir, "operators", "alice", "extendedKeyUsage=clientAuth\\n");
    openssl_cert(
        &dir,
        "intruders",
        "mallory",
        "extendedKeyUsage=clientAuth\\n",
    );
    // Beside the agent's proxy (21330) and DNS (21331) ports for index 33.
    let port = 21335;
    let d = dir.display();
    let extra = format!(
        "control_tcp:\n  listen: 127.0.0.1:{port}\n  cert: {d}/server.pem\n  key: {d}/server.key\n  client_ca: {d}/operators.pem\n"
    );
    let agent = Agent::start_with("approval-remote", 33, &[], &extra);
    agent.ok(&["sandbox", "create", "remote-demo"]);
    let url = format!("https://127.0.0.1:{port}");
    let as_user = |user: &str| {
        agent.cli(&[
            "--remote",
            &url,
            "--remote-ca",
            &format!("{d}/server-ca.pem"),
            "--remote-cert",
            &format!("{d}/{user}.pem"),
            "--remote-key",
            &format!("{d}/{user}.key"),
            "sandbox",
            "list",
        ])
    };
    let alice = as_user("alice");
    assert!(alice.status.success(), "{}", portcullis_e2e::stderr(&alice));
    assert!(stdout(&alice).contains("remote-demo"));
    let mallory = as_user("mallory");
    assert!(
        !mallory.status.success(),
        "a certificate from another CA is refused"
    );
    assert!(!stdout(&mallory).contains("remote-demo"));
}
