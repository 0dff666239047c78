//! Policy enforcement end to end: OpenShell-schema policies decide real
//! curl, python and node connections by binary, host and port; names come
//! from the agent's synthetic DNS; SSRF rules hold whatever the policy says;
//! policies reload without restarts, and every decision is audited.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use portcullis_e2e::{
    Agent, Upstream, WAIT,
    ocsf::{binary, is_net},
    privileged, stderr, stdout,
};
use serde_json::Value;

fn curl(agent: &Agent, sandbox: &str, url: &str) -> std::process::Output {
    agent.run_in(sandbox, &["curl", "-fsS", "--max-time", "10", url])
}

const PY_GET: &str = "import sys, urllib.request\n\
    try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n\
    except Exception as e:\n    print('error', type(e).__name__)\n";

const NODE_GET: &str = "require('http').get(process.argv[1], r => { console.log(r.statusCode); r.resume(); })\
    .on('error', e => console.log('error', e.code))";

#[test]
fn binaries_ports_and_wildcard_hosts_are_decided_with_synthetic_dns() {
    if !privileged() {
        return;
    }
    let mut up = Upstream::http(12);
    up.serve_http(8081);
    let hosts = [
        ("api.example.test", up.ip4.as_str()),
        ("a.wild.test", &up.ip4),
        ("b.a.wild.test", &up.ip4),
    ];
    let agent = Agent::start("policy-basic", 12, &hosts);
    let policy = format!(
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/node
  wild:
    endpoints:
      - host: \"*.wild.test\"
        port: 8080
        allowed_ips: [\"{}/30\"]
    binaries:
      - path: /usr/bin/python3*
",
        up.ip4
    );
    let p = agent.write_policy("p.yaml", &policy);
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);

    // Answers are synthetic, stable, and both families exist.
    let resolve = "import socket\n\
        a = {x[4][0] for x in socket.getaddrinfo('api.example.test', 80, socket.AF_INET)}\n\
        b = {x[4][0] for x in socket.getaddrinfo('api.example.test', 80, socket.AF_INET)}\n\
        c = {x[4][0] for x in socket.getaddrinfo('api.example.test', 80, socket.AF_INET6)}\n\
        print(sorted(a) == sorted(b), list(a)[0], list(c)[0])\n";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", resolve]);
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"True"), "{text} {}", stderr(&out));
    assert!(
        fields[1].starts_with("10.200."),
        "synthetic IPv4 expected: {text}"
    );
    assert!(fields[2].contains(':') && fields[1] != up.ip4, "{text}");

    let api = "http://api.example.test:8080/ok";
    assert!(curl(&agent, "demo", api).status.success(), "curl allowed");
    let node = agent.run_in("demo", &["/usr/bin/node", "-e", NODE_GET, api]);
    assert_eq!(
        stdout(&node).trim(),
        "200",
        "node allowed: {}",
        stderr(&node)
    );
    let py = agent.run_in("demo", &["/usr/bin/python3", "-c", PY_GET, api]);
    assert!(
        stdout(&py).starts_with("error"),
        "python denied on api: {}",
        stdout(&py)
    );
    // Port outside the rule.
    assert!(
        !curl(&agent, "demo", "http://api.example.test:8081/")
            .status
            .success()
    );
    // Wildcard: one label only.
    let py = agent.run_in(
        "demo",
        &[
            "/usr/bin/python3",
            "-c",
            PY_GET,
            "http://a.wild.test:8080/w",
        ],
    );
    assert_eq!(
        stdout(&py).trim(),
        "200",
        "python on *.wild.test: {}",
        stderr(&py)
    );
    let py = agent.run_in(
        "demo",
        &[
            "/usr/bin/python3",
            "-c",
            PY_GET,
            "http://b.a.wild.test:8080/w",
        ],
    );
    assert!(
        stdout(&py).starts_with("error"),
        "two labels must not match *.wild.test"
    );

    let denied_port = agent
        .wait_event(WAIT, |e| {
            is_net(e, 2) && e["unmapped"]["engine"] == "l4" && e["dst_endpoint"]["port"] == 8081
        })
        .expect("deny event for port 8081");
    assert!(
        denied_port
            .to_string()
            .contains("is not allowed by any policy"),
        "{denied_port}"
    );
    let node_allowed = agent
        .wait_event(WAIT, |e| is_net(e, 1) && binary(e) == "/usr/bin/node")
        .expect("allow event for node");
    assert_eq!(node_allowed["dst_endpoint"]["hostname"], "api.example.test");
    assert_eq!(
        node_allowed["dst_endpoint"]["ip"],
        up.ip4.as_str(),
        "the real address was dialled"
    );
    assert_eq!(node_allowed["firewall_rule"]["name"], "api");
    assert_eq!(node_allowed["unmapped"]["policy_version"], "1");
    assert_eq!(node_allowed["metadata"]["version"], "1.8.0");
    assert_eq!(node_allowed["metadata"]["product"]["name"], "Portcullis");
    // Both files carry the decisions.
    let shorthand = agent.shorthand();
    assert!(
        shorthand.contains(" OCSF NET:OPEN [INFO] ALLOWED /usr/bin/node("),
        "{shorthand}"
    );
    assert!(shorthand.contains(" DENIED /usr/bin/curl("), "{shorthand}");
    // glibc's address-sorting UDP connects to synthetic answers are refused
    // and counted, not audited.
    let probes = agent
        .events()
        .into_iter()
        .filter(|e| {
            e["activity_id"] == 5
                && e["dst_endpoint"]["ip"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("10.200.")
        })
        .count();
    assert_eq!(probes, 0, "UDP probes to synthetic addresses were audited");
    let status = agent.ok(&["status"]);
    let kernel_denied = status
        .lines()
        .find(|l| l.trim_start().starts_with("kernel_denied"))
        .unwrap();
    assert!(!kernel_denied.trim_end().ends_with(" 0"), "{status}");
    // policy.local is the agent: the skill is served there and installed
    // where agents look for it.
    let skill = agent.run_in(
        "demo",
        &[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "http://policy.local/v1/skill",
        ],
    );
    assert!(
        stdout(&skill).contains("# Policy advisor"),
        "{}",
        stderr(&skill)
    );
    let installed = std::fs::read_to_string(agent.root.join("skills/policy_advisor.md")).unwrap();
    assert_eq!(installed, stdout(&skill));
    // `portcullis logs` shows the sandbox's lines.
    let logs = agent.ok(&["logs", "demo"]);
    assert!(logs.contains("ALLOWED /usr/bin/node("), "{logs}");
    let json = agent.ok(&["logs", "demo", "--json"]);
    assert!(
        json.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{json}"
    );
}

#[test]
fn ssrf_is_blocked_whatever_the_policy_names() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(13);
    let hosts = [
        ("loop.test", "127.0.0.1"),
        ("internal.wild.test", up.ip4.as_str()),
    ];
    let agent = Agent::start("policy-ssrf", 13, &hosts);
    let p = agent.write_policy(
        "p.yaml",
        "version: 1
network_policies:
  internal:
    endpoints:
      - host: 127.0.0.1
        port: 9999
      - host: 169.254.169.254
        port: 80
      - host: loop.test
        port: 8080
      - host: \"*.wild.test\"
        port: 8080
    binaries:
      - path: /usr/bin/curl
",
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    for url in [
        "http://127.0.0.1:9999/",
        "http://169.254.169.254/latest/meta-data/",
        "http://loop.test:8080/",
        // A wildcard host is not an exact declaration: internal addresses
        // need allowed_ips.
        "http://internal.wild.test:8080/",
    ] {
        let out = curl(&agent, "demo", url);
        assert!(
            !out.status.success(),
            "{url} must be blocked: {}",
            stdout(&out)
        );
    }
    for (ip, port) in [
        ("127.0.0.1", 9999),
        ("169.254.169.254", 80),
        ("127.0.0.1", 8080),
        (up.ip4.as_str(), 8080),
    ] {
        let e = agent
            .wait_event(WAIT, |e| {
                is_net(e, 2)
                    && e["firewall_rule"]["type"] == "ssrf"
                    && e["dst_endpoint"]["port"] == port
                    && e.to_string().contains(ip)
            })
            .unwrap_or_else(|| panic!("no ssrf event for {ip}:{port}: {:#?}", agent.events()));
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("blocked"),
            "{e}"
        );
    }
}

#[test]
fn denied_names_never_reach_upstream_dns_and_spoofed_names_are_denied() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(14);
    let hosts = [
        ("api.example.test", up.ip4.as_str()),
        ("other.example.test", &up.ip4),
    ];
    let agent = Agent::start("policy-names", 14, &hosts);
    let p = agent.write_policy(
        "p.yaml",
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/python3*
",
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    assert!(
        curl(&agent, "demo", "http://api.example.test:8080/")
            .status
            .success()
    );
    assert!(
        !curl(&agent, "demo", "http://other.example.test:8080/")
            .status
            .success()
    );
    agent
        .wait_stderr("resolved api.example.test", WAIT)
        .expect("allowed name resolved upstream");
    let lines = agent.stderr_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("resolved other.example.test")),
        "a denied name was resolved upstream: {lines:#?}"
    );

    // HTTP Host naming another host than the one resolved.
    let out = agent.run_in(
        "demo",
        &[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "-H",
            "Host: other.example.test",
            "http://api.example.test:8080/",
        ],
    );
    assert!(
        !out.status.success(),
        "Host spoofing must be denied: {}",
        stdout(&out)
    );
    // TLS SNI naming another host.
    let sni = "import socket, ssl, sys\n\
        s = socket.create_connection(('api.example.test', 8080), timeout=10)\n\
        ctx = ssl.create_default_context()\n\
        try:\n    ctx.wrap_socket(s, server_hostname='other.example.test')\n    print('handshake')\n\
        except (OSError, ssl.SSLError) as e:\n    print('refused', type(e).__name__)\n";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", sni]);
    assert!(
        stdout(&out).starts_with("refused"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    for what in [
        "HTTP Host 'other.example.test'",
        "TLS SNI 'other.example.test'",
    ] {
        agent
            .wait_event(WAIT, |e| is_net(e, 2) && e.to_string().contains(what))
            .unwrap_or_else(|| panic!("no deny event for {what}: {:#?}", agent.events()));
    }
}

#[test]
fn policies_reload_without_restart_and_invalid_ones_are_rejected() {
    if !privileged() {
        return;
    }
    let mut up = Upstream::http(15);
    up.spawn(&[env!("CARGO_BIN_EXE_bench"), "serve", "9000"]);
    let hosts = [
        ("api.example.test", up.ip4.as_str()),
        ("echo.example.test", &up.ip4),
    ];
    let agent = Agent::start("policy-reload", 15, &hosts);
    let echo_only = agent.write_policy(
        "v1.yaml",
        "version: 1
network_policies:
  echo:
    endpoints:
      - host: echo.example.test
        port: 9000
    binaries:
      - path: /usr/bin/python3*
",
    );
    agent.ok(&[
        "sandbox",
        "create",
        "demo",
        "--policy",
        echo_only.to_str().unwrap(),
    ]);
    let api = "http://api.example.test:8080/";
    assert!(
        !curl(&agent, "demo", api).status.success(),
        "not yet allowed"
    );

    // A long-lived relay opened under version 1.
    let script = "import socket, sys\n\
        s = socket.create_connection(('echo.example.test', 9000), timeout=30)\n\
        s.sendall(b'ping')\n\
        assert s.recv(4) == b'ping'\n\
        print('relayed', flush=True)\n\
        try:\n    data = s.recv(10)\n    print('closed' if data == b'' else 'data')\n\
        except ConnectionResetError:\n    print('closed')\n\
        except socket.timeout:\n    print('still open')\n";
    let mut relay = Command::new(portcullis_e2e::portcullis_bin())
        .args([
            "--config",
            agent.config.to_str().unwrap(),
            "run",
            "--sandbox",
            "demo",
            "--",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(
        first.as_deref(),
        Some("relayed"),
        "agent: {:#?}",
        agent.stderr_lines()
    );

    // Version 2 opens the API to curl and no longer allows the echo relay.
    let v2 = agent.write_policy(
        "v2.yaml",
        "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8080
    binaries:
      - path: /usr/bin/curl
",
    );
    let out = agent.ok(&[
        "policy",
        "set",
        "demo",
        "--policy",
        v2.to_str().unwrap(),
        "--wait",
    ]);
    assert!(out.contains("policy version 2 loaded"), "{out}");
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("closed"),
        "the relay was not closed"
    );
    relay.wait().unwrap();
    let out = curl(&agent, "demo", api);
    assert!(
        out.status.success(),
        "allowed after reload without restart: {}",
        stderr(&out)
    );
    agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 4001 && e["activity_id"] == 2 && e["dst_endpoint"]["port"] == 9000
        })
        .expect("relay close event");

    // An invalid candidate is rejected with its path; version 2 stays.
    let bad = agent.write_policy(
        "bad.yaml",
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.test\n        port: 99999\n",
    );
    let out = agent.cli(&["policy", "set", "demo", "--policy", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad.yaml") && err.contains("network_policies.api.endpoints[0].port"),
        "{err}"
    );
    assert!(err.contains("version 2"), "{err}");
    let get = agent.ok(&["policy", "get", "demo"]);
    assert!(get.contains("version   2"), "{get}");
    assert!(
        curl(&agent, "demo", api).status.success(),
        "version 2 still in force"
    );
    let history = agent.ok(&["policy", "history", "demo"]);
    for status in ["superseded", "loaded", "failed"] {
        assert!(history.contains(status), "{history}");
    }
    let hash_line = agent.ok(&["policy", "list"]);
    assert!(
        hash_line.contains("demo") && hash_line.contains(v2.to_str().unwrap()),
        "{hash_line}"
    );
    let full = agent.ok(&["policy", "get", "demo", "--full"]);
    assert!(full.contains("api.example.test"), "{full}");

    // CONFIG events: loaded twice, failed once, in both files.
    agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 5019 && e["unmapped"]["state_label"] == "failed"
        })
        .expect("failed CONFIG event");
    let shorthand = agent.shorthand();
    assert!(shorthand.contains("CONFIG:LOADED"), "{shorthand}");
    assert!(shorthand.contains("CONFIG:FAILED"), "{shorthand}");

    // Reloads survive a restart of the agent.
    let mut agent = agent;
    agent.kill();
    agent.spawn();
    let get = agent.ok(&["policy", "get", "demo"]);
    assert!(get.contains("version   2"), "{get}");
    assert!(curl(&agent, "demo", api).status.success());
}

#[test]
fn each_sandbox_has_its_own_synthetic_names() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(16);
    let agent = Agent::start("policy-pools", 16, &[("api.example.test", up.ip4.as_str())]);
    let p = agent.write_policy(
        "p.yaml",
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
    for sandbox in ["a", "b"] {
        agent.ok(&[
            "sandbox",
            "create",
            sandbox,
            "--policy",
            p.to_str().unwrap(),
        ]);
    }
    let resolve =
        "import socket; print(socket.getaddrinfo('api.example.test', 80, socket.AF_INET)[0][4][0])";
    let a_ip = stdout(&agent.run_in("a", &["/usr/bin/python3", "-c", resolve]))
        .trim()
        .to_string();
    assert!(a_ip.starts_with("10.200."), "{a_ip}");
    // Sandbox b never resolved the name: a's address means nothing there,
    // even though b's policy allows the name.
    let connect = "import socket, sys\n\
        try:\n    s = socket.create_connection((sys.argv[1], 8080), timeout=10)\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    print(s.recv(12).decode())\n\
        except OSError as e:\n    print('refused', type(e).__name__)\n";
    let out = agent.run_in("b", &["/usr/bin/python3", "-c", connect, &a_ip]);
    let b_view = stdout(&out);
    assert!(b_view.starts_with("refused"), "b used a's answer: {b_view}");
    agent
        .wait_event(WAIT, |e| {
            is_net(e, 2) && e["unmapped"]["sandbox"] == "b" && e.to_string().contains(&a_ip)
        })
        .expect("deny event in sandbox b");
    // Pools are separate (a shared pool would give both the same answer;
    // separate keyed pools collide with odds of about 1 in 65,000).
    let b_ip = stdout(&agent.run_in("b", &["/usr/bin/python3", "-c", resolve]))
        .trim()
        .to_string();
    assert_ne!(a_ip, b_ip, "both sandboxes got their answer from one pool");
    // An unconnected socket (sendto/recvfrom) gets the same answer from the
    // same pool, and the reply appears to come from the resolver it asked.
    let raw_query = "import socket, struct\n\
        ns = next((l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')), '127.0.0.53')\n\
        q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)\n\
        q += b''.join(bytes([len(p)]) + p.encode() for p in 'api.example.test'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.settimeout(5)\n\
        s.sendto(q, (ns, 53))\n\
        data, src = s.recvfrom(512)\n\
        print(src == (ns, 53), socket.inet_ntoa(data[-4:]))\n";
    let out = agent.run_in("a", &["/usr/bin/python3", "-c", raw_query]);
    assert_eq!(
        stdout(&out).trim(),
        format!("True {a_ip}"),
        "{}",
        stderr(&out)
    );

    // Each sandbox reaches the name through its own answer.
    for (sandbox, ip) in [("a", &a_ip), ("b", &b_ip)] {
        let out = agent.run_in(sandbox, &["/usr/bin/python3", "-c", connect, ip]);
        assert!(
            stdout(&out).starts_with("HTTP/1.0 200"),
            "{sandbox}: {}",
            stdout(&out)
        );
    }
}
