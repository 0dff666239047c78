//! The kernel datapath end to end: real BPF programs on real cgroups, real
//! clients in sandboxes, a real upstream host in a network namespace.

use std::time::Duration;

use portcullis_e2e::{
    Agent, Upstream, WAIT,
    ocsf::{binary, is_allowed, is_denied},
    privileged, stderr, stdout,
};
use serde_json::Value;

fn policy(hosts_ports: &[(&str, u16)], binaries: &[&str]) -> String {
    let endpoints: String = hosts_ports
        .iter()
        .map(|(h, p)| format!("      - host: \"{h}\"\n        port: {p}\n"))
        .collect();
    let bins: String = binaries
        .iter()
        .map(|b| format!("      - path: \"{b}\"\n"))
        .collect();
    format!(
        "version: 1\nnetwork_policies:\n  upstream:\n    name: upstream\n    endpoints:\n{endpoints}    binaries:\n{bins}"
    )
}

fn dst_port(e: &Value) -> u64 {
    e["dst_endpoint"]["port"].as_u64().unwrap_or(0)
}

const PY_GET: &str = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())";

#[test]
fn curl_and_python_are_captured_attributed_and_relayed() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(1);
    let agent = Agent::start("capture", 1, &[]);
    let p = agent.write_policy(
        "p.yaml",
        &policy(&[(&up.ip4, 8080)], &["/usr/bin/curl", "/usr/bin/python3*"]),
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);

    let url = format!("http://{}:8080/hello", up.ip4);
    let out = agent.run_in("demo", &["curl", "-fsS", "--max-time", "10", &url]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    assert!(
        stdout(&out).contains("\"path\": \"/hello\""),
        "{}",
        stdout(&out)
    );

    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", PY_GET, &url]);
    assert!(out.status.success(), "python: {}", stderr(&out));
    assert!(stdout(&out).contains("/hello"));

    // The proxy saw the original destination and the binary.
    for bin in ["/usr/bin/curl", "/usr/bin/python3"] {
        let e = agent
            .wait_event(WAIT, |e| {
                is_allowed(e) && binary(e).starts_with(bin) && dst_port(e) == 8080
            })
            .unwrap_or_else(|| panic!("no allowed event for {bin}: {:#?}", agent.events()));
        assert_eq!(e["dst_endpoint"]["ip"], up.ip4.as_str());
        assert_eq!(e["unmapped"]["sandbox"], "demo");
    }
    // The sandbox ran unprivileged.
    let out = agent.run_in("demo", &["id", "-u"]);
    assert_eq!(stdout(&out).trim(), "65534");
}

#[test]
fn two_binaries_get_different_verdicts_for_one_destination() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(2);
    let agent = Agent::start("verdicts", 2, &[]);
    let p = agent.write_policy("p.yaml", &policy(&[(&up.ip4, 8080)], &["/usr/bin/curl"]));
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    let url = format!("http://{}:8080/x", up.ip4);

    let curl = agent.run_in("demo", &["curl", "-fsS", "--max-time", "10", &url]);
    assert!(curl.status.success(), "curl: {}", stderr(&curl));
    let python = agent.run_in("demo", &["/usr/bin/python3", "-c", PY_GET, &url]);
    assert!(
        !python.status.success(),
        "python must be denied: {}",
        stdout(&python)
    );

    let e = agent
        .wait_event(WAIT, |e| {
            is_denied(e) && binary(e).starts_with("/usr/bin/python3")
        })
        .expect("deny event for python");
    let reason = e["unmapped"]["reason"]
        .as_str()
        .or(e["status_detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let text = e.to_string();
    assert!(
        text.contains("not allowed in policy 'upstream'"),
        "{reason} {text}"
    );
}

#[test]
fn udp_is_refused_in_the_kernel_and_reported() {
    if !privileged() {
        return;
    }
    // The destination is a host of this test's own, so even a broken
    // datapath sends nothing beyond this machine.
    let up = Upstream::create(3);
    let agent = Agent::start("udp", 3, &[]);
    agent.ok(&["sandbox", "create", "demo"]);
    let script = "import socket, os, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        print(os.getpid(), flush=True)\n\
        try:\n    s.sendto(b'x', (sys.argv[1], 443))\n    print('sent')\n\
        except PermissionError as e:\n    print('refused', e.errno)\n";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", script, &up.ip4]);
    let text = stdout(&out);
    let mut lines = text.lines();
    let pid: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert_eq!(lines.next(), Some("refused 1"), "{text}");

    let e = agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 4001 && e["actor"]["process"]["pid"] == pid
        })
        .unwrap_or_else(|| panic!("no kernel denial event: {:#?}", agent.events()));
    assert_eq!(e["action_id"], 2);
    assert_eq!(e["dst_endpoint"]["ip"], up.ip4.as_str());
    assert_eq!(e["dst_endpoint"]["port"], 443);
    assert_eq!(e["unmapped"]["comm"], "python3");
    assert_eq!(e["unmapped"]["hook"], "sendmsg4");
    assert!(e["unmapped"]["cgroup_id"].as_u64().unwrap() > 0);
    assert!(e.to_string().contains("udp_not_allowed"));
    assert!(agent.ok(&["status"]).contains("kernel_denied"));
}

#[test]
fn dns_is_answered_by_the_responder_and_names_reach_the_policy() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(4);
    let agent = Agent::start("dns", 4, &[("api.example.test", &up.ip4)]);
    // The policy names the host, not the address: only the DNS answer the
    // responder gave links the two.
    let p = agent.write_policy(
        "p.yaml",
        &policy(&[("api.example.test", 8080)], &["/usr/bin/curl"]),
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);

    let resolve = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('api.example.test', 80, socket.AF_INET)}))";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", resolve]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The answer is synthetic: the real address stays with the agent.
    let answer = stdout(&out);
    assert!(answer.trim().starts_with("['10.200."), "{answer}");

    let out = agent.run_in(
        "demo",
        &[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "http://api.example.test:8080/named",
        ],
    );
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let e = agent
        .wait_event(WAIT, |e| {
            is_allowed(e) && e["dst_endpoint"]["hostname"] == "api.example.test"
        })
        .expect("allowed event with the hostname");
    // The proxy dialled the real address.
    assert_eq!(e["dst_endpoint"]["ip"], up.ip4.as_str());
}

#[test]
fn ipv4_ipv6_and_v4_mapped_connects_are_captured_and_show_their_peer() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(5);
    let agent = Agent::start("ipv6", 5, &[]);
    let mapped = format!("::ffff:{}", up.ip4);
    let p = agent.write_policy(
        "p.yaml",
        &policy(&[(&up.ip6, 8080), (&up.ip4, 8080)], &["/usr/bin/python3*"]),
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    // getpeername must show the destination the workload asked for.
    let script = "import socket, sys\n\
        for host in sys.argv[1:]:\n\
        \x20   family = socket.AF_INET if '.' in host and ':' not in host else socket.AF_INET6\n\
        \x20   s = socket.socket(family, socket.SOCK_STREAM)\n\
        \x20   s.settimeout(10)\n\
        \x20   s.connect((host, 8080))\n\
        \x20   print(s.getpeername()[0], s.getpeername()[1])\n\
        \x20   s.sendall(b'GET /v6 HTTP/1.0\\r\\n\\r\\n')\n\
        \x20   print(s.recv(4096).split(b' ')[1].decode())\n";
    let out = agent.run_in(
        "demo",
        &["/usr/bin/python3", "-c", script, &up.ip4, &up.ip6, &mapped],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let expected = format!(
        "{} 8080\n200\n{} 8080\n200\n{mapped} 8080\n200\n",
        up.ip4, up.ip6
    );
    assert_eq!(text, expected);
    for ip in [up.ip6.as_str(), up.ip4.as_str()] {
        agent
            .wait_event(WAIT, |e| is_allowed(e) && e["dst_endpoint"]["ip"] == ip)
            .unwrap_or_else(|| panic!("no allowed event for {ip}: {:#?}", agent.events()));
    }
}

#[test]
fn agent_sockets_and_its_listener_are_never_looped() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(6);
    let agent = Agent::start("loop", 6, &[]);
    agent.ok(&["sandbox", "create", "demo"]);
    let cgroup = agent.cgroup_dir("demo");
    // A socket carrying the agent's mark, inside the sandbox cgroup, is let
    // through unchanged (only root can set a mark, which is why workloads
    // never run as root).
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, {mark})\n\
         s.settimeout(10)\n\
         s.connect(('{ip}', 8080))\n\
         s.sendall(b'GET /marked HTTP/1.0\\r\\n\\r\\n')\n\
         print(s.recv(4096).split(b' ')[1].decode())\n",
        mark = agent.self_mark,
        ip = up.ip4
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec /usr/bin/python3 -c \"$0\"",
            cgroup.display()
        ))
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).trim(),
        "200",
        "marked socket: {}",
        stderr(&out)
    );
    // A direct connect to the proxy port is not rewritten; the proxy has no
    // original destination for it and refuses it.
    let direct = format!(
        "import socket\n\
         try:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n    print(len(s.recv(10)))\n\
         except ConnectionResetError:\n    print('reset')\n",
        port = agent.proxy_port
    );
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", &direct]);
    assert!(
        ["reset", "0"].contains(&stdout(&out).trim()),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let status = agent.ok(&["status"]);
    assert!(
        status.contains("1 without original destination"),
        "{status}"
    );
    let skipped = status
        .lines()
        .find(|l| l.trim_start().starts_with("self_mark_skipped"))
        .unwrap();
    assert!(!skipped.trim_end().ends_with(" 0"), "{status}");
    assert!(
        agent
            .events()
            .iter()
            .all(|e| e["dst_endpoint"]["port"] != 8080),
        "the marked socket was captured"
    );
}

#[test]
fn a_dead_agent_fails_closed_and_a_restarted_one_adopts_its_state() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(7);
    let mut agent = Agent::start("restart", 7, &[]);
    let p = agent.write_policy("p.yaml", &policy(&[(&up.ip4, 8080)], &["/usr/bin/curl"]));
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    let url = format!("http://{}:8080/alive", up.ip4);
    let curl = ["curl", "-fsS", "--max-time", "10", url.as_str()];
    assert!(agent.run_in("demo", &curl).status.success());

    agent.kill();
    // `portcullis run` needs the agent; start the workload by hand.
    let cgroup = agent.cgroup_dir("demo");
    let started = std::time::Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec setpriv --reuid=65534 --regid=65534 --clear-groups curl -sS --max-time 10 {url}",
            cgroup.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl must fail to connect: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Couldn't connect to server"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failure must be fast"
    );

    agent.spawn();
    let out = agent.run_in("demo", &curl);
    assert!(out.status.success(), "after restart: {}", stderr(&out));
    assert!(agent.ok(&["sandbox", "list"]).contains("demo"));
}

#[test]
fn bad_input_gets_clear_errors() {
    if !privileged() {
        return;
    }
    let agent = Agent::start("errors", 8, &[]);
    let out = agent.run_in("nope", &["true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no sandbox named `nope`"),
        "{}",
        stderr(&out)
    );

    let out = agent.cli(&["sandbox", "create", "Bad/Name"]);
    assert!(
        stderr(&out).contains("invalid sandbox name"),
        "{}",
        stderr(&out)
    );

    let bad = agent.write_policy("bad.yaml", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: \"*.com\"\n        port: 443\n");
    let out = agent.cli(&[
        "sandbox",
        "create",
        "demo",
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("network_policies.x.endpoints[0].host"),
        "{}",
        stderr(&out)
    );

    agent.ok(&["sandbox", "create", "demo"]);
    let out = agent.cli(&["run", "--sandbox", "demo", "--user", "root", "--", "true"]);
    assert!(stderr(&out).contains("is root"), "{}", stderr(&out));

    // Not root.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(portcullis_e2e::portcullis_bin())
        .args(["--config", agent.config.to_str().unwrap(), "agent"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );

    // No cgroup2 mount: hide it in a private mount namespace.
    let root = portcullis_e2e::cgroup2_root();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "umount -l {} && exec \"$0\" --config \"$1\" agent",
            root.display()
        ))
        .arg(portcullis_e2e::portcullis_bin())
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("no cgroup2 filesystem is mounted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn down_removes_programs_pins_and_cgroups() {
    if !privileged() {
        return;
    }
    let agent = Agent::start("down", 9, &[]);
    agent.ok(&["sandbox", "create", "demo"]);
    let status = agent.ok(&["status"]);
    assert!(status.contains("12 links attached"), "{status}");
    assert!(agent.cgroup_dir("demo").exists());
    let out = agent.ok(&["down"]);
    assert!(out.contains("1 sandboxes removed"), "{out}");
    assert!(!agent.bpffs_dir().exists());
    assert!(!agent.cgroup_dir("demo").exists());
    let out = agent.cli(&["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is `portcullis agent` running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn short_lived_processes_and_ancestors_are_attributed() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(10);
    let agent = Agent::start("identity", 10, &[]);
    // Only python may connect, so curl gets through only as python's child.
    let p = agent.write_policy(
        "p.yaml",
        &policy(&[(&up.ip4, 8080)], &["/usr/bin/python3*"]),
    );
    agent.ok(&["sandbox", "create", "demo", "--policy", p.to_str().unwrap()]);
    let url = format!("http://{}:8080/child", up.ip4);
    let spawn_curl = "import subprocess, sys; sys.exit(subprocess.run(['curl', '-sS', '--max-time', '10', sys.argv[1]]).returncode)";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", spawn_curl, &url]);
    assert!(out.status.success(), "curl under python: {}", stderr(&out));
    let e = agent
        .wait_event(WAIT, |e| is_allowed(e) && binary(e) == "/usr/bin/curl")
        .expect("curl allowed through its python ancestor");
    let parent = &e["actor"]["process"]["parent_process"]["file"]["path"];
    assert!(
        parent
            .as_str()
            .unwrap_or_default()
            .starts_with("/usr/bin/python3"),
        "{e}"
    );

    // A process that connects and exits at once is gone from /proc before
    // the proxy looks; the exec events still name it.
    let hit_and_run = "import os, socket, sys\n\
        s = socket.socket()\n\
        s.setblocking(False)\n\
        s.connect_ex((sys.argv[1], 8080))\n\
        print(os.getpid(), flush=True)\n\
        os._exit(0)\n";
    let out = agent.run_in("demo", &["/usr/bin/python3", "-c", hit_and_run, &up.ip4]);
    let pid: u64 = stdout(&out).trim().parse().expect("pid");
    let e = agent
        .wait_event(WAIT, |e| {
            e["class_uid"] == 4001 && e["actor"]["process"]["pid"] == pid
        })
        .unwrap_or_else(|| panic!("no event for short-lived pid {pid}: {:#?}", agent.events()));
    assert!(binary(&e).starts_with("/usr/bin/python3"), "{e}");
    assert_eq!(e["action_id"], 1, "{e}");
}

#[test]
fn an_adopted_cgroup_is_captured_and_may_not_use_the_control_plane() {
    if !privileged() {
        return;
    }
    let up = Upstream::http(11);
    let agent = Agent::start("adopt", 11, &[]);
    // Stands in for a container runtime's cgroup.
    let container = portcullis_e2e::cgroup2_root().join("pc-e2e-adopt-container");
    let _ = std::fs::remove_dir(&container);
    std::fs::create_dir(&container).unwrap();
    let out = agent.ok(&[
        "sandbox",
        "adopt",
        "ctr",
        "--cgroup",
        container.to_str().unwrap(),
    ]);
    assert!(out.contains("10 programs attached"), "{out}");

    let in_container = |cmd: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {cmd}",
                container.display()
            ))
            .output()
            .unwrap()
    };
    // No policy: the sandbox denies all egress.
    let out = in_container(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups curl -fsS --max-time 10 http://{}:8080/",
        up.ip4
    ));
    assert!(
        !out.status.success(),
        "adopted cgroup must be captured: {}",
        stdout(&out)
    );
    agent
        .wait_event(WAIT, |e| is_denied(e) && e["unmapped"]["sandbox"] == "ctr")
        .expect("deny event for the adopted sandbox");

    // Even root inside a sandbox cannot reach the control plane.
    let out = in_container(&format!(
        "{} --config {} status",
        portcullis_e2e::portcullis_bin().display(),
        agent.config.display()
    ));
    assert!(
        !out.status.success(),
        "a sandboxed process reached the control plane"
    );
    assert!(
        agent
            .wait_stderr("refused control connection", WAIT)
            .is_some(),
        "the agent did not log the refusal"
    );

    // Deleting an adopted sandbox detaches it but leaves the cgroup.
    agent.ok(&["sandbox", "delete", "ctr"]);
    assert!(container.exists());
    let out = in_container(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups curl -fsS --max-time 10 http://{}:8080/",
        up.ip4
    ));
    assert!(out.status.success(), "detached: {}", stderr(&out));
    std::fs::remove_dir(&container).unwrap();
}
