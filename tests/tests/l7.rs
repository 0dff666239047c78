//! L7 end to end: TLS terminated with the Portcullis CA, each HTTP request
//! decided on method, path and query, denials answered with the agent-
//! readable body. The upstream is a real HTTPS server (HTTP/1.1, HTTP/2,
//! gRPC, WebSocket) with its own test CA, trusted by the agent through
//! `upstream_extra_roots`.

use std::path::PathBuf;

use portcullis_e2e::{RestFixture, WAIT, privileged, stderr, stdout};
use serde_json::Value;

const UPSTREAM: &str = env!("CARGO_BIN_EXE_e2e-upstream");
const GRPC_CLIENT_BUILT: &str = env!("CARGO_BIN_EXE_e2e-grpc-client");

/// The gRPC client where `nobody` can run it: the checkout may sit below a
/// directory the sandbox user cannot enter (/root, say).
fn grpc_client() -> String {
    let dir = PathBuf::from("/tmp/portcullis-e2e/bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("e2e-grpc-client");
    // Copy to a temporary name, then rename: parallel tests never see a
    // half-written binary.
    let tmp = dir.join(format!("e2e-grpc-client.{}", std::process::id()));
    std::fs::copy(GRPC_CLIENT_BUILT, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

/// An agent whose sandbox `demo` runs under `policy`, with the REST
/// stand-in on 8443 (TLS) and 8080 (plain).
fn fixture(name: &str, index: u16, policy: &str) -> RestFixture {
    RestFixture::start(UPSTREAM, name, index, policy, &[])
}

const READ_ONLY: &str = "version: 1
network_policies:
  github_ro:
    name: github_ro
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
      - host: api.example.test
        port: 8080
        protocol: rest
        enforcement: enforce
        access: read-only
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/python3*
      - path: /usr/bin/node
";

/// `curl -sS` with the response status appended on its own line.
fn curl(f: &RestFixture, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = f.agent.run_in("demo", &argv);
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn read_only_allows_reads_and_denies_writes_with_the_agent_readable_body() {
    if !privileged() {
        return;
    }
    let f = fixture("l7-readonly", 20, READ_ONLY);
    let base = "https://api.example.test:8443";

    let (code, body) = curl(&f, &[&format!("{base}/repos/o/r?per_page=5")]);
    assert_eq!(code, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/repos/o/r");
    // HEAD is allowed through GET.
    let (code, _) = curl(&f, &["-I", &format!("{base}/repos/o/r")]);
    assert_eq!(code, 200);

    let (code, body) = curl(
        &f,
        &[
            "-X",
            "PUT",
            "-d",
            "{}",
            &format!("{base}/repos/o/r/contents/x?token=secret"),
        ],
    );
    assert_eq!(code, 403, "{body}");
    let deny = json(&body);
    // Keys on the wire in the reference's order (serde_json's Value sorts
    // them, so the raw text is checked).
    let order = [
        "error",
        "policy",
        "rule",
        "detail",
        "layer",
        "protocol",
        "method",
        "path",
        "host",
        "port",
        "binary",
        "rule_missing",
        "next_steps",
        "agent_guidance",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            body.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("no key {k}: {body}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "key order: {body}"
    );
    assert_eq!(deny["error"], "policy_denied");
    assert_eq!(deny["policy"], "github_ro");
    assert_eq!(deny["rule"], "PUT /repos/o/r/contents/x");
    assert_eq!(deny["layer"], "l7");
    assert_eq!(deny["path"], "/repos/o/r/contents/x", "no query, no secret");
    assert_eq!(deny["host"], "api.example.test");
    assert_eq!(deny["port"], 8443);
    assert_eq!(deny["binary"], "/usr/bin/curl");
    assert_eq!(deny["rule_missing"]["type"], "rest_allow");
    assert_eq!(deny["rule_missing"]["method"], "PUT");
    let actions: Vec<&str> = deny["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "read_skill",
            "inspect_policy",
            "inspect_recent_denials",
            "submit_proposal"
        ]
    );
    assert!(!body.contains("secret"));

    // Both policy headers.
    let out = f.agent.run_in(
        "demo",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-X",
            "DELETE",
            &format!("{base}/repos/o/r"),
        ],
    );
    let headers = stdout(&out).to_ascii_lowercase();
    assert!(
        headers.contains("x-openshell-policy: github_ro"),
        "{headers}"
    );
    assert!(
        headers.contains("x-portcullis-policy: github_ro"),
        "{headers}"
    );

    // python and node see the same denial.
    let py = "import sys, json, urllib.request\n\
        req = urllib.request.Request(sys.argv[1], data=b'{}', method='PUT')\n\
        try:\n    urllib.request.urlopen(req, timeout=10)\n    print('allowed')\n\
        except urllib.error.HTTPError as e:\n    print(e.code, json.loads(e.read())['rule'])\n";
    let out = f.agent.run_in(
        "demo",
        &[
            "/usr/bin/python3",
            "-c",
            py,
            &format!("{base}/repos/o/r/contents/x"),
        ],
    );
    assert_eq!(
        stdout(&out).trim(),
        "403 PUT /repos/o/r/contents/x",
        "{}",
        stderr(&out)
    );
    let node = "const https = require('https');\n\
        const req = https.request(process.argv[1], { method: 'PUT' }, r => {\n\
          let b = ''; r.on('data', d => b += d); r.on('end', () => console.log(r.statusCode, JSON.parse(b).layer));\n\
        });\n\
        req.on('error', e => console.log('error', e.code)); req.end('{}');";
    let out = f.agent.run_in(
        "demo",
        &[
            "/usr/bin/node",
            "-e",
            node,
            &format!("{base}/repos/o/r/contents/x"),
        ],
    );
    assert_eq!(stdout(&out).trim(), "403 l7", "{}", stderr(&out));
    let out = f.agent.run_in(
        "demo",
        &[
            "/usr/bin/node",
            "-e",
            "require('https').get(process.argv[1], r => { console.log(r.statusCode); r.resume(); })",
            &format!("{base}/repos/o/r"),
        ],
    );
    assert_eq!(stdout(&out).trim(), "200", "{}", stderr(&out));

    // Plain HTTP is decided the same way.
    let (code, _) = curl(&f, &["http://api.example.test:8080/repos/o/r"]);
    assert_eq!(code, 200);
    let (code, body) = curl(
        &f,
        &["-X", "POST", "http://api.example.test:8080/repos/o/r"],
    );
    assert_eq!(code, 403);
    assert_eq!(json(&body)["layer"], "l7");

    // Every decision is an HTTP Activity event; the shorthand matches §7.4.
    f.agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 4002
                && e["http_request"]["http_method"] == "PUT"
                && e["action_id"] == 2
        })
        .expect("4002 deny event");
    let shorthand = f.agent.shorthand();
    assert!(shorthand.contains("HTTP:PUT [MED] DENIED"), "{shorthand}");
    assert!(
        shorthand.contains("[policy:github_ro engine:l7]"),
        "{shorthand}"
    );
    assert!(
        !shorthand.contains("token=secret"),
        "query strings are never logged"
    );
}

#[test]
fn deny_rules_queries_traversal_and_encoded_slashes() {
    if !privileged() {
        return;
    }
    let policy = "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        enforcement: enforce
        rules:
          - allow:
              method: GET
              path: /public/**
          - allow:
              method: GET
              path: /search
              query:
                q: \"ok*\"
          - allow:
              method: POST
              path: /public/**
        deny_rules:
          - method: POST
            path: /public/locked/**
    binaries:
      - path: /usr/bin/curl
";
    let f = fixture("l7-rules", 21, policy);
    let base = "https://api.example.test:8443";
    assert_eq!(curl(&f, &[&format!("{base}/public/a/b")]).0, 200);
    assert_eq!(
        curl(&f, &["-X", "POST", &format!("{base}/public/a")]).0,
        200
    );
    // The deny rule wins over the allow.
    let (code, body) = curl(&f, &["-X", "POST", &format!("{base}/public/locked/x")]);
    assert_eq!(code, 403);
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("deny rule"),
        "{body}"
    );
    // Query matchers.
    assert_eq!(curl(&f, &[&format!("{base}/search?q=okay")]).0, 200);
    assert_eq!(curl(&f, &[&format!("{base}/search?q=bad")]).0, 403);
    // Traversal is resolved before matching and the canonical path is sent.
    let (code, body) = curl(&f, &["--path-as-is", &format!("{base}/public/../admin/x")]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body)["path"], "/admin/x");
    let (code, body) = curl(&f, &["--path-as-is", &format!("{base}/public/./a//b")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["path"],
        "/public/a/b",
        "the upstream sees the canonical form"
    );
    // Encoded slashes and dot segments cannot be canonicalised: 400.
    for trick in ["/public/a%2F..%2F..%2Fadmin", "/public/%2e%2e/admin"] {
        let (code, body) = curl(&f, &["--path-as-is", &format!("{base}{trick}")]);
        assert_eq!(code, 400, "{trick}: {body}");
        assert_eq!(json(&body)["error"], "invalid_request_target");
    }
}

#[test]
fn audit_mode_forwards_and_records() {
    if !privileged() {
        return;
    }
    let f = fixture(
        "l7-audit",
        22,
        &READ_ONLY.replacen("enforcement: enforce", "enforcement: audit", 1),
    );
    let (code, body) = curl(
        &f,
        &["-X", "PUT", "https://api.example.test:8443/repos/o/r"],
    );
    assert_eq!(code, 200, "audit forwards: {body}");
    f.agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 4002
                && e["http_request"]["http_method"] == "PUT"
                && e["action_id"] == 1
        })
        .expect("audited request recorded");
    assert!(
        f.agent.shorthand().contains("HTTP:PUT"),
        "{}",
        f.agent.shorthand()
    );
}

#[test]
fn keep_alive_requests_are_decided_one_by_one() {
    if !privileged() {
        return;
    }
    let f = fixture("l7-keepalive", 23, READ_ONLY);
    let py = "import http.client, ssl\n\
        c = http.client.HTTPSConnection('api.example.test', 8443, context=ssl.create_default_context(), timeout=10)\n\
        out = []\n\
        for method, path in [('GET', '/a'), ('GET', '/b'), ('PUT', '/c')]:\n\
        \x20   c.request(method, path, body=b'' if method == 'PUT' else None)\n\
        \x20   r = c.getresponse()\n\
        \x20   r.read()\n\
        \x20   out.append(str(r.status))\n\
        print(' '.join(out))\n";
    let out = f.agent.run_in("demo", &["/usr/bin/python3", "-c", py]);
    assert_eq!(stdout(&out).trim(), "200 200 403", "{}", stderr(&out));
}

#[test]
fn http2_grpc_and_websocket_pass_through() {
    if !privileged() {
        return;
    }
    let grpc = grpc_client();
    let policy = "version: 1
network_policies:
  api:
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        enforcement: enforce
        rules:
          - allow:
              method: GET
              path: /**
          - allow:
              method: POST
              path: /e2e.Echo/*
      - host: api.example.test
        port: 8080
        protocol: websocket
        enforcement: enforce
        access: read-only
    binaries:
      - path: /usr/bin/curl
      - path: /usr/bin/python3*
      - path: \"{grpc}\"
"
    .replace("{grpc}", &grpc);
    let f = fixture("l7-h2", 24, &policy);
    let (code, body) = curl(&f, &["--http2", "https://api.example.test:8443/h2"]);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["version"], "HTTP/2", "h2 on both legs");
    let out = f.agent.run_in(
        "demo",
        &[
            "curl",
            "-sS",
            "--http2",
            "-v",
            "https://api.example.test:8443/trailers",
        ],
    );
    assert!(
        stderr(&out).contains("x-trailer: yes"),
        "trailers pass: {}",
        stderr(&out)
    );
    let out = f.agent.run_in(
        "demo",
        &[grpc.as_str(), "https://api.example.test:8443", "hi"],
    );
    assert_eq!(stdout(&out).trim(), "echo: hi", "gRPC: {}", stderr(&out));

    // WebSocket echo over plain HTTP on a websocket endpoint.
    let ws = "import base64, os, socket\n\
        s = socket.create_connection(('api.example.test', 8080), timeout=10)\n\
        key = base64.b64encode(os.urandom(16)).decode()\n\
        s.sendall(('GET /ws HTTP/1.1\\r\\nHost: api.example.test:8080\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n\
        \x20          'Sec-WebSocket-Key: ' + key + '\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n').encode())\n\
        head = b''\n\
        while b'\\r\\n\\r\\n' not in head:\n    head += s.recv(1)\n\
        print(head.split(b' ')[1].decode())\n\
        mask = os.urandom(4)\n\
        payload = b'hello portcullis'\n\
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))\n\
        frame = s.recv(2)\n\
        print(s.recv(frame[1] & 0x7f).decode())\n";
    let out = f.agent.run_in("demo", &["/usr/bin/python3", "-c", ws]);
    assert_eq!(stdout(&out), "101\nhello portcullis\n", "{}", stderr(&out));
}

#[test]
fn tls_skip_relays_the_upstream_bytes_unchanged() {
    if !privileged() {
        return;
    }
    let policy = "version: 1
network_policies:
  raw:
    endpoints:
      - host: api.example.test
        port: 8443
        tls: skip
    binaries:
      - path: /usr/bin/curl
";
    let f = fixture("l7-skip", 25, policy);
    // Not terminated: the client sees the upstream's own certificate, so
    // only the upstream's CA verifies it.
    let ca = f.certs.join("ca.pem");
    std::fs::set_permissions(
        &f.certs,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&ca, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, body) = curl(
        &f,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "https://api.example.test:8443/raw",
        ],
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl(&f, &["https://api.example.test:8443/raw"]);
    assert_eq!(
        code, 0,
        "the Portcullis CA must not verify an uninspected tunnel"
    );
}

#[test]
fn smuggling_and_denied_hosts_get_answers_not_tunnels() {
    if !privileged() {
        return;
    }
    let f = fixture("l7-smuggle", 26, READ_ONLY);
    // CL.TE smuggling: the body is framed by Transfer-Encoding alone and
    // the connection is closed after the response (RFC 9112 §6.3), so the
    // "smuggled" PUT is never read, let alone forwarded. Obs-fold and
    // oversized heads are refused outright.
    let smuggle = "import re, socket, ssl, sys\n\
        ctx = ssl.create_default_context()\n\
        def send(raw):\n\
        \x20   s = ctx.wrap_socket(socket.create_connection(('api.example.test', 8443), timeout=10), server_hostname='api.example.test')\n\
        \x20   s.sendall(raw)\n\
        \x20   data = b''\n\
        \x20   while True:\n\
        \x20       try:\n\
        \x20           chunk = s.recv(65536)\n\
        \x20       except ConnectionResetError:\n\
        \x20           chunk = b''\n\
        \x20       if not chunk:\n\
        \x20           break\n\
        \x20       data += chunk\n\
        \x20   return [m.decode() for m in re.findall(rb'HTTP/1\\.1 (\\d{3}) ', data)]\n\
        smuggled = b'PUT /repos/o/r HTTP/1.1\\r\\nHost: api.example.test\\r\\nContent-Length: 0\\r\\n\\r\\n'\n\
        body = b'0\\r\\n\\r\\n' + smuggled\n\
        print(send(b'GET /a HTTP/1.1\\r\\nHost: api.example.test\\r\\nContent-Length: ' + str(len(body)).encode() + b'\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n' + body))\n\
        print(send(b'GET /a HTTP/1.1\\r\\nHost: api.example.test\\r\\nX-Folded: a\\r\\n b\\r\\nConnection: close\\r\\n\\r\\n'))\n\
        print(send(b'GET /a HTTP/1.1\\r\\nHost: api.example.test\\r\\nX-Big: ' + b'x' * 70000 + b'\\r\\n\\r\\n'))\n";
    let out = f.agent.run_in("demo", &["/usr/bin/python3", "-c", smuggle]);
    assert_eq!(
        stdout(&out),
        "['200']\n['400']\n['431']\n",
        "{}",
        stderr(&out)
    );

    // A host no policy names: TLS is still terminated (leaf from the local
    // CA, which the sandbox trusts) and the L4 body comes back.
    let (code, body) = curl(&f, &["https://other.example.test:8443/x"]);
    assert_eq!(code, 403, "{body}");
    let deny = json(&body);
    assert_eq!(deny["layer"], "l4");
    assert_eq!(deny["rule_missing"]["type"], "l4_allow");
    assert_eq!(deny["rule_missing"]["host"], "other.example.test");
    assert_eq!(deny["rule_missing"]["port"], 8443);
}

#[test]
fn direct_ip_connects_are_decided_on_the_ip_with_the_client_named_host_for_tls() {
    if !privileged() {
        return;
    }
    // No policy yet: the upstream's real address is known only now.
    let f = fixture("l7-direct", 27, "version: 1\n");
    // The real address comes from the agent's hosts file.
    let hosts = std::fs::read_to_string(f.agent.root.join("hosts")).unwrap();
    let real = hosts.split_whitespace().next().unwrap().to_string();
    let policy = format!(
        "version: 1
network_policies:
  by_ip:
    endpoints:
      - host: \"{real}\"
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
    binaries:
      - path: /usr/bin/curl
"
    );
    let path = f.agent.write_policy("ip.yaml", &policy);
    f.agent
        .ok(&["policy", "set", "demo", "--policy", path.to_str().unwrap()]);
    // curl --resolve skips DNS: the connect carries the real IP and the
    // ClientHello names the host, which the leaf and the upstream TLS use.
    let resolve = format!("api.example.test:8443:{real}");
    let (code, body) = curl(
        &f,
        &["--resolve", &resolve, "https://api.example.test:8443/ok"],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["host"], "api.example.test:8443");
    let (code, body) = curl(
        &f,
        &[
            "--resolve",
            &resolve,
            "-X",
            "DELETE",
            "https://api.example.test:8443/ok",
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body)["policy"], "by_ip");
}
