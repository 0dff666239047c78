//! The adversarial suite: an unprivileged workload in a real sandbox tries
//! to get a byte past the agent, and a canary outside (in a network
//! namespace) records everything that reaches it. An escape is anything
//! the canary saw from the workload, or anything the workload could do
//! that it should not (open a raw socket, leave its cgroup...).
//!
//! Each run writes `target/adversarial/escapes.json`: attempts made and
//! escapes (must be 0), which `cargo xtask test` sums into its report.

use std::{
    net::TcpStream,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
};

use portcullis_e2e::{
    Agent, Upstream, json_lines, portcullis_bin, privileged, secret_sightings, stdout,
    write_adversarial_record,
};
use serde_json::{Value, json};

const ATTEMPTS: &str = include_str!("../scripts/escape_attempts.py");
const PYTHON: &str = "/usr/bin/python3";
/// The canary's ports: one no policy allows, DNS, HTTPS/QUIC.
const CANARY_TCP: [u16; 3] = [9999, 53, 443];
const CANARY_UDP: [u16; 2] = [53, 443];

/// Listens on every canary port (dual-stack), answers `CANARY`, and
/// appends what each client sent to the hit file given as argv[1].
const CANARY: &str = r#"
import socket, sys, threading
hits = open(sys.argv[1], "a", buffering=1)
def record(kind, port, peer, data):
    hits.write(f"{kind} {port} {peer} {data!r}\n")
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(64)
    while True:
        c, peer = s.accept()
        def serve(c=c, peer=peer):
            c.settimeout(2)
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            record("tcp", port, peer[0], data)
            try:
                c.sendall(b"CANARY\n")
            except OSError:
                pass
            c.close()
        threading.Thread(target=serve, daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(4096)
        record("udp", port, peer[0], data)
        s.sendto(b"CANARY", peer)
for port in [int(p) for p in sys.argv[2].split(",")]:
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
for port in [int(p) for p in sys.argv[3].split(",")]:
    threading.Thread(target=udp, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn an_unprivileged_workload_gets_nothing_past_the_agent() {
    if !privileged() {
        return;
    }
    let mut canary = Upstream::create(44);
    let hits = PathBuf::from("/tmp/portcullis-e2e/adversarial-canary.hits");
    let _ = std::fs::remove_file(&hits);
    std::fs::create_dir_all(hits.parent().unwrap()).unwrap();
    canary.spawn(&[
        PYTHON,
        "-c",
        CANARY,
        hits.to_str().unwrap(),
        &join(&CANARY_TCP),
        &join(&CANARY_UDP),
    ]);

    let agent = Agent::start("adversarial", 44, &[("api.example.test", "198.51.100.7")]);
    agent.create_sandbox(
        "box",
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
    binaries:
      - path: /usr/bin/python3*
",
    );
    let script = agent.root.join("escape_attempts.py");
    std::fs::write(&script, ATTEMPTS).unwrap();

    // A connection opened outside the sandbox, left inheritable: the
    // workload must not receive it.
    let outside = TcpStream::connect((canary.ip4.as_str(), CANARY_TCP[0])).unwrap();
    let fd = outside.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);

    let cgroup_root = portcullis_e2e::cgroup2_root();
    let control = agent.root.join("run/control.sock");
    let (proxy_port, mark) = (agent.proxy_port.to_string(), agent.self_mark.to_string());
    let fd_arg = fd.to_string();
    let out = Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(portcullis_bin())
        .arg("--config")
        .arg(&agent.config)
        .args(["run", "--sandbox", "box", "--", PYTHON])
        .arg(&script)
        .args([canary.ip4.as_str(), canary.ip6.as_str(), &proxy_port])
        .arg(&cgroup_root)
        .arg(&control)
        .args([&mark, &fd_arg])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(outside);
    let results = json_lines(&out, 13);

    // The canary's record is the authority: it saw the harness's own
    // connection (empty), and nothing the workload sent.
    let seen = std::fs::read_to_string(&hits).unwrap_or_default();
    let canary_escapes: Vec<&str> = seen.lines().filter(|l| l.contains("ESCAPE")).collect();
    let workload_escapes: Vec<&Value> = results.iter().filter(|r| r["escaped"] == true).collect();
    let summary = json!({
        "suite": "escape attempts",
        "attempts": results.len(),
        "escapes": workload_escapes.len() + canary_escapes.len(),
        "results": results,
        "canary": seen.lines().collect::<Vec<_>>(),
    });
    write_adversarial_record("escapes.json", &summary);
    println!(
        "adversarial: {} escape attempts, {} escapes",
        results.len(),
        summary["escapes"]
    );
    assert!(
        workload_escapes.is_empty() && canary_escapes.is_empty(),
        "escapes: workload saw {workload_escapes:#?}; canary saw {canary_escapes:#?}"
    );

    // Each kernel-level refusal is on record as a denial, not silence.
    let denials = agent.shorthand();
    for needle in [canary.ip4.as_str(), "DENIED"] {
        assert!(denials.contains(needle), "{needle} in {denials}");
    }
}

/// Posts N distinct proposals as fast as it can; prints one JSON line per
/// reply: status, error code and Retry-After.
const FLOOD: &str = r#"
import json, sys, urllib.error, urllib.request
for i in range(int(sys.argv[1])):
    rule = {"endpoints": [{"host": f"h{i}.example.test", "port": 443}],
            "binaries": [{"path": "/usr/bin/curl"}]}
    body = json.dumps({"operations": [{"addRule": {"ruleName": f"r{i}", "rule": rule}}]}).encode()
    req = urllib.request.Request("http://policy.local/v1/proposals", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text, retry = r.status, r.read().decode(), None
    except urllib.error.HTTPError as e:
        status, text, retry = e.code, e.read().decode(), e.headers.get("Retry-After")
    print(json.dumps({"status": status, "error": json.loads(text).get("error"), "retry_after": retry}), flush=True)
"#;

#[test]
fn a_proposal_flood_is_rate_limited_and_counted() {
    if !privileged() {
        return;
    }
    let agent = Agent::start("adversarial-flood", 45, &[]);
    agent.ok(&["sandbox", "create", "box"]);
    let out = agent.run_in("box", &[PYTHON, "-c", FLOOD, "50"]);
    let replies = json_lines(&out, 50);
    let accepted = replies.iter().filter(|r| r["status"] == 202).count();
    let limited: Vec<&Value> = replies.iter().filter(|r| r["status"] == 429).collect();
    // The burst (20), give or take a token earned while the flood ran.
    assert!(
        (20..=22).contains(&accepted),
        "accepted {accepted}: {replies:#?}"
    );
    assert_eq!(accepted + limited.len(), 50, "{replies:#?}");
    for r in &limited {
        assert_eq!(r["error"], "rate_limited");
        let wait: u64 = r["retry_after"].as_str().unwrap().parse().unwrap();
        assert!((1..=3).contains(&wait), "{r}");
    }
    let status = agent.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "{} proposals refused by the rate limit",
            limited.len()
        )),
        "{status}"
    );
    // Only the admitted proposals reached the store.
    let pending = agent.ok(&["rule", "get", "box", "--status", "pending", "--json"]);
    let chunks: Value = serde_json::from_str(&pending).unwrap();
    let stored = chunks["chunks"].as_array().map_or(0, Vec::len);
    assert_eq!(stored, accepted, "{pending}");
    write_adversarial_record(
        "flood.json",
        &json!({"suite": "proposal flood", "sent": 50, "accepted": accepted,
                "rate_limited": limited.len()}),
    );
}

/// One full request, then a second head trickled a header line every
/// 200 ms; prints how long the proxy let it dribble and how it ended.
const SLOWLORIS: &str = r#"
import json, socket, time
s = socket.create_connection(("api.example.test", 8080), timeout=30)
s.sendall(b"GET /first HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
first = s.recv(65536)
s.sendall(b"GET /second HTTP/1.1\r\nHost: api.example.test\r\n")
start = time.monotonic()
how = "still open after 20 s"
while time.monotonic() - start < 20:
    try:
        s.sendall(b"X-Slow: 1\r\n")
        s.settimeout(0.2)
        if s.recv(65536) == b"":
            how = "closed"
            break
    except socket.timeout:
        continue
    except OSError as e:
        how = type(e).__name__
        break
print(json.dumps({"first": first.split(b"\r\n")[0].decode(), "seconds": time.monotonic() - start, "how": how}))
"#;

#[test]
fn a_slowloris_client_is_cut_off_at_the_head_deadline() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(46);
    let agent = Agent::start_with(
        "adversarial-slow",
        46,
        &[("api.example.test", up.ip4.as_str())],
        "http_head_seconds: 2\n",
    );
    agent.create_sandbox(
        "box",
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
        protocol: rest
        access: read-only
    binaries:
      - path: /usr/bin/python3*
",
    );
    let out = agent.run_in("box", &[PYTHON, "-c", SLOWLORIS]);
    let line: Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(line["first"].as_str().unwrap().contains(" 200"), "{line}");
    let seconds = line["seconds"].as_f64().unwrap();
    assert_ne!(line["how"], "still open after 20 s", "{line}");
    // Cut at the 2 s deadline, not at once and not much later.
    assert!((1.5..6.0).contains(&seconds), "{line}");

    // policy.local: a trickled head is cut at the same deadline; a
    // trickled body gets 408 at the 15 s body deadline (contract §2.4).
    let out = agent.run_in("box", &[PYTHON, "-c", SLOW_LOCAL]);
    let lines = json_lines(&out, 2);
    let of = |what: &str| lines.iter().find(|l| l["what"] == what).unwrap();
    let head = of("head");
    assert_ne!(head["how"], "still open after 25 s", "{head}");
    assert!(
        (1.5..6.0).contains(&head["seconds"].as_f64().unwrap()),
        "{head}"
    );
    let body = of("body");
    assert!(
        body["how"].as_str().unwrap().starts_with("HTTP/1.1 408"),
        "{body}"
    );
    assert!(
        body["how"].as_str().unwrap().contains("request_timeout"),
        "{body}"
    );
    assert!(
        (14.0..20.0).contains(&body["seconds"].as_f64().unwrap()),
        "{body}"
    );
    write_adversarial_record(
        "fault-slowloris.json",
        &json!({"fault": "slowloris", "survived": true,
                "facts": {"proxy_head_cut_seconds": seconds,
                          "policy_local_head_cut_seconds": head["seconds"],
                          "policy_local_body_cut_seconds": body["seconds"]}}),
    );
}

/// Trickles a head, and (at once, in another thread) a body, to
/// policy.local a line every 200 ms; a line for each: how long it was let
/// dribble and how it ended.
const SLOW_LOCAL: &str = r#"
import json, socket, threading, time
def trickle(what, head, drip):
    s = socket.create_connection(("policy.local", 80), timeout=30)
    s.sendall(head)
    start = time.monotonic()
    how = "still open after 25 s"
    got = b""
    while time.monotonic() - start < 25:
        try:
            s.sendall(drip)
            s.settimeout(0.2)
            more = s.recv(65536)
            if more == b"":
                how = got.decode(errors="replace") or "closed"
                break
            got += more
        except socket.timeout:
            continue
        except OSError as e:
            how = got.decode(errors="replace") or type(e).__name__
            break
    print(json.dumps({"what": what, "seconds": time.monotonic() - start, "how": how}), flush=True)
ts = [
    threading.Thread(target=trickle, args=("head", b"GET /v1/policy/current HTTP/1.1\r\nHost: policy.local\r\n", b"X-Slow: 1\r\n")),
    threading.Thread(target=trickle, args=("body", b"POST /v1/proposals HTTP/1.1\r\nHost: policy.local\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n", b" ")),
]
for t in ts: t.start()
for t in ts: t.join()
"#;

const HTTP_ATTACKS: &str = include_str!("../scripts/http_attacks.py");

#[test]
fn http_tricks_reach_no_path_the_policy_does_not_allow() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(47);
    let agent = Agent::start(
        "adversarial-http",
        47,
        &[("api.example.test", up.ip4.as_str())],
    );
    agent.create_sandbox(
        "box",
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
        protocol: rest
        enforcement: enforce
        rules:
          - allow:
              method: GET
              path: /public/**
    binaries:
      - path: /usr/bin/python3*
",
    );
    let script = agent.root.join("http_attacks.py");
    std::fs::write(&script, HTTP_ATTACKS).unwrap();
    let out = agent.run_in(
        "box",
        &[
            PYTHON,
            script.to_str().unwrap(),
            "api.example.test",
            "8080",
            "192.0.2.99",
        ],
    );
    let results = json_lines(&out, 16);
    let escapes: Vec<&Value> = results.iter().filter(|r| r["escaped"] == true).collect();
    write_adversarial_record(
        "http.json",
        &json!({"suite": "HTTP tricks", "attempts": results.len(),
                "escapes": escapes.len(), "results": results}),
    );
    println!(
        "adversarial: {} HTTP tricks, {} escapes",
        results.len(),
        escapes.len()
    );
    assert!(escapes.is_empty(), "escapes: {escapes:#?}");
    // The allowed path still works, so the refusals are not a dead proxy.
    let ok = agent.run_in(
        "box",
        &[
            PYTHON,
            "-c",
            "import urllib.request;print(urllib.request.urlopen('http://api.example.test:8080/public/ok').status)",
        ],
    );
    assert_eq!(
        stdout(&ok).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A connection that sends nothing is recorded as such, not as an
    // unknown protocol.
    agent.run_in(
        "box",
        &[
            PYTHON,
            "-c",
            "import socket; socket.create_connection(('api.example.test', 8080)).close()",
        ],
    );
    agent
        .wait_event(portcullis_e2e::WAIT, |e| {
            e.to_string().contains("the client sent nothing")
        })
        .expect("the empty connection's denial names why");
}

const LEAK_ATTEMPTS: &str = include_str!("../scripts/leak_attempts.py");
const UPSTREAM_BIN: &str = env!("CARGO_BIN_EXE_e2e-upstream");
const SECRET: &str = "ghp_adversarialSecret0123456789";

/// python and node may use api.github.com (where the provider binds the
/// credential) and other.example.test (which binds nothing), both served
/// by the mirroring upstream; curl may propose rules.
const LEAK_POLICY: &str = "version: 1
network_policies:
  web:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        access: read-write
      - host: api.github.com
        port: 80
        protocol: rest
        access: read-write
      - host: other.example.test
        port: 443
        protocol: rest
        access: read-write
    binaries:
      - path: /usr/bin/python3*
      - path: /usr/bin/node
";

#[test]
fn a_credential_reaches_only_its_host_and_names_and_proposals_smuggle_nothing() {
    if !privileged() {
        return;
    }
    let f = portcullis_e2e::RestFixture::serving(
        UPSTREAM_BIN,
        "adversarial-leaks",
        56,
        LEAK_POLICY,
        &[],
        &["api.github.com", "other.example.test"],
        (443, 80),
    );
    let agent = &f.agent;
    let secret_file = agent.root.join("token");
    std::fs::write(&secret_file, SECRET).unwrap();
    agent.ok(&[
        "provider",
        "create",
        "gh",
        "--type",
        "github",
        "--credential",
        "GITHUB_TOKEN",
        "--from-file",
        secret_file.to_str().unwrap(),
    ]);
    std::fs::remove_file(&secret_file).unwrap();
    agent.ok(&["sandbox", "provider", "attach", "demo", "gh"]);

    let script = agent.root.join("leak_attempts.py");
    std::fs::write(&script, LEAK_ATTEMPTS).unwrap();
    let out = agent.run_in("demo", &[PYTHON, script.to_str().unwrap()]);
    let results = json_lines(&out, 32);
    let of = |kind: &str| -> Vec<&Value> { results.iter().filter(|r| r["kind"] == kind).collect() };
    let reply = |r: &Value| r["reply"].as_str().unwrap_or_default().to_string();

    // The legitimate use delivers the value, so a search for it can fail.
    let (controls, placements): (Vec<&Value>, Vec<&Value>) =
        of("secret").into_iter().partition(|r| r["control"] == true);
    assert!(
        reply(controls[0]).contains(SECRET),
        "the bound host gets the credential: {}",
        controls[0]
    );
    let leaked: Vec<&&Value> = placements
        .iter()
        .filter(|r| reply(r).contains(SECRET))
        .collect();
    // Every placement was refused or carried the placeholder unresolved;
    // none failed for an unrelated reason (a dead proxy leaks nothing).
    let unanswered: Vec<&&Value> = placements
        .iter()
        .filter(|r| reply(r).starts_with("error") || reply(r).is_empty())
        .collect();
    let stderr = agent.stderr_lines();
    let sightings = secret_sightings(&agent.root, &stderr, SECRET);
    write_adversarial_record(
        "leaks.json",
        &json!({"suite": "secrets", "attempts": placements.len() + 1,
                "leaked": leaked.len() + usize::from(!sightings.is_empty()),
                "results": placements, "sightings": sightings}),
    );

    // Names: answered by the agent itself; no resolver is asked for one.
    let names = of("name");
    let looked_up: Vec<&&Value> = names
        .iter()
        .filter(|r| {
            let name = r["attempt"].as_str().unwrap();
            stderr
                .iter()
                .any(|l| l.contains(&format!("resolved {name}")))
        })
        .collect();
    // Proposals for metadata and link-local targets: all refused.
    let proposals = of("proposal");
    let accepted: Vec<&&Value> = proposals
        .iter()
        .filter(|r| !reply(r).starts_with("400 "))
        .collect();
    write_adversarial_record(
        "names.json",
        &json!({"suite": "DNS names and proposals", "attempts": names.len() + proposals.len(),
                "escapes": looked_up.len() + accepted.len(),
                "results": names.iter().chain(&proposals).collect::<Vec<_>>()}),
    );
    println!(
        "adversarial: {} credential placements, {} leaked; {} names and proposals, {} escapes",
        placements.len() + 1,
        leaked.len() + usize::from(!sightings.is_empty()),
        names.len() + proposals.len(),
        looked_up.len() + accepted.len()
    );
    assert!(leaked.is_empty(), "leaked: {leaked:#?}");
    assert!(sightings.is_empty(), "the secret shows: {sightings:#?}");
    assert!(unanswered.is_empty(), "unanswered: {unanswered:#?}");
    assert!(looked_up.is_empty(), "names looked up: {looked_up:#?}");
    assert!(accepted.is_empty(), "proposals accepted: {accepted:#?}");
    for r in &names[..3] {
        assert!(
            !reply(r).starts_with("error"),
            "an exfiltration name is answered, locally: {r}"
        );
    }
}
