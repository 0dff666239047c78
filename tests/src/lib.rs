//! Harness for the privileged end-to-end tests.
//!
//! Each test gets its own agent (state, run and log directories, bpffs pin
//! root, cgroup parent, ports) and its own upstream host in a network
//! namespace it creates, reached over a veth pair on TEST-NET addresses.
//! Nothing outside loopback and those namespaces is contacted.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Whether privileged tests can run here. In CI (`CI=true`) they must:
/// a missing precondition fails the test instead of skipping it.
pub fn privileged() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        missing.push("bpffs at /sys/fs/bpf".to_string());
    }
    match std::env::var_os("PORTCULLIS_BIN") {
        Some(bin) if Path::new(&bin).is_file() => {}
        _ => missing.push("PORTCULLIS_BIN (run through `cargo xtask test`)".to_string()),
    }
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "privileged test cannot run in CI: missing {}",
        missing.join(", ")
    );
    eprintln!("skipping privileged test: missing {}", missing.join(", "));
    false
}

pub fn portcullis_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("PORTCULLIS_BIN").expect("PORTCULLIS_BIN"))
}

/// Waits for a line matching `pred` on a reader, with a deadline.
pub fn wait_for_line(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The lines a reader yields, on a channel (read by a thread).
pub fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A test's agent. Dropping it stops the agent and runs `portcullis down`.
pub struct Agent {
    pub name: String,
    pub root: PathBuf,
    pub config: PathBuf,
    pub proxy_port: u16,
    pub dns_port: u16,
    pub self_mark: u32,
    child: Option<Child>,
    stderr: Option<mpsc::Receiver<String>>,
}

impl Agent {
    /// `index` keeps ports and names apart between tests running at once.
    pub fn start(name: &str, index: u16, hosts: &[(&str, &str)]) -> Agent {
        Self::start_with(name, index, hosts, "")
    }

    /// `start`, with extra lines appended to the agent configuration.
    pub fn start_with(name: &str, index: u16, hosts: &[(&str, &str)], extra_config: &str) -> Agent {
        let root = PathBuf::from(format!("/tmp/portcullis-e2e/{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let hosts_file = root.join("hosts");
        let hosts_text: String = hosts.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
        std::fs::write(&hosts_file, hosts_text).unwrap();
        let proxy_port = 21000 + index * 10;
        let dns_port = proxy_port + 1;
        let self_mark = 0x5043_0000 + u32::from(index);
        let config = root.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "state_dir: {root}/state\nrun_dir: {root}/run\nlog_dir: {root}/log\n\
                 bpffs_dir: /sys/fs/bpf/portcullis-e2e-{name}\ncgroup_parent: portcullis-e2e-{name}\n\
                 proxy_port: {proxy_port}\ndns_port: {dns_port}\nself_mark: {self_mark}\n\
                 hosts_file: {hosts}\nskill_dirs: [{root}/skills]\n{extra_config}",
                root = root.display(),
                hosts = hosts_file.display(),
            ),
        )
        .unwrap();
        let mut agent = Agent {
            name: name.to_string(),
            root,
            config,
            proxy_port,
            dns_port,
            self_mark,
            child: None,
            stderr: None,
        };
        // A previous run that crashed may have left pins and cgroups.
        let _ = agent.cli(&["down"]);
        agent.spawn();
        agent
    }

    /// Starts the agent process and waits for its ready line. It logs at
    /// `PORTCULLIS_E2E_LOG` (the benchmark sets plain `info`), by default
    /// info plus the upstream name resolutions some tests look for.
    pub fn spawn(&mut self) {
        let mut child = Command::new(portcullis_bin())
            .args(["--config", self.config.to_str().unwrap(), "agent"])
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let ready = wait_for_line(&stdout, Duration::from_secs(30), |l| {
            l.starts_with("portcullis: ready")
        });
        if ready.is_none() {
            let _ = child.kill();
            let err: Vec<String> = stderr.try_iter().collect();
            panic!(
                "agent {} did not become ready:\n{}",
                self.name,
                err.join("\n")
            );
        }
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout {});
        self.child = Some(child);
        self.stderr = Some(stderr);
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no cleanup runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Lines the agent wrote to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Waits until the agent writes a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        wait_for_line(self.stderr.as_ref()?, timeout, |l| l.contains(needle))
    }

    /// Runs the CLI, killing it (and a workload it started, which shares
    /// its process group) if it takes longer than a minute: a hung client
    /// fails its test instead of stalling the suite.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "5", "60"])
            .arg(portcullis_bin())
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run portcullis")
    }

    /// Starts a long-running CLI command (`rule watch`, a workload in a
    /// sandbox); its stdout lines arrive on the receiver.
    pub fn spawn_cli(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = Command::new(portcullis_bin())
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run portcullis");
        let lines = lines_of(child.stdout.take().unwrap());
        (child, lines)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "portcullis {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates sandbox `sandbox` under `policy_yaml`.
    pub fn create_sandbox(&self, sandbox: &str, policy_yaml: &str) {
        let policy = self.write_policy(&format!("{sandbox}.policy.yaml"), policy_yaml);
        self.ok(&[
            "sandbox",
            "create",
            sandbox,
            "--policy",
            policy.to_str().unwrap(),
        ]);
    }

    pub fn write_policy(&self, file: &str, yaml: &str) -> PathBuf {
        let path = self.root.join(file);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Runs `cmd` in `sandbox` through `portcullis run`.
    pub fn run_in(&self, sandbox: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--sandbox", sandbox, "--"];
        args.extend_from_slice(cmd);
        self.cli(&args)
    }

    /// OCSF events written so far, parsed. Waits (bounded) until one
    /// satisfies `pred`, since the writer is asynchronous.
    pub fn wait_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.root.join("log")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("ocsf.") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
                }
            }
        }
        out
    }

    pub fn shorthand(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.root.join("log")) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("portcullis.")
                {
                    out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn cgroup_dir(&self, sandbox: &str) -> PathBuf {
        cgroup2_root()
            .join(format!("portcullis-e2e-{}", self.name))
            .join(sandbox)
    }

    pub fn bpffs_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/portcullis-e2e-{}", self.name))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.cli(&["down"]);
        self.kill();
    }
}

/// The agent's `RUST_LOG` in tests; see [`Agent::spawn`].
fn log_filter() -> String {
    std::env::var("PORTCULLIS_E2E_LOG").unwrap_or_else(|_| "info,portcullis::dns=debug".into())
}

pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup2 mount")
}

/// An upstream host: a network namespace joined to the host by a veth pair,
/// with TEST-NET-3 IPv4 and documentation-prefix IPv6 addresses. (TEST-NET-1
/// can be the host's real network on CI machines, so it is not used.)
pub struct Upstream {
    pub netns: String,
    veth: String,
    pub ip4: String,
    pub ip6: String,
    servers: Vec<Child>,
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Upstream {
    /// `index` picks a /30 in 203.0.113.0/24 and a /64 in 2001:db8::/32.
    pub fn create(index: u16) -> Upstream {
        let netns = format!("pc-e2e-up{index}");
        let veth = format!("pce2e{index}");
        let base = index * 4;
        let (host4, ns4) = (
            format!("203.0.113.{}", base + 1),
            format!("203.0.113.{}", base + 2),
        );
        let (host6, ns6) = (
            format!("2001:db8:{index:x}::1"),
            format!("2001:db8:{index:x}::2"),
        );
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(&format!("ip netns add {netns}"));
        sh(&format!(
            "ip link add {veth} type veth peer name eth0 netns {netns}"
        ));
        sh(&format!(
            "ip addr add {host4}/30 dev {veth} && ip -6 addr add {host6}/64 dev {veth} nodad && ip link set {veth} up"
        ));
        sh(&format!(
            "ip -n {netns} addr add {ns4}/30 dev eth0 && ip -n {netns} -6 addr add {ns6}/64 dev eth0 nodad && \
             ip -n {netns} link set eth0 up && ip -n {netns} link set lo up"
        ));
        Upstream {
            netns,
            veth,
            ip4: ns4,
            ip6: ns6,
            servers: Vec::new(),
        }
    }

    /// An upstream with an HTTP server on port 8080, as most tests want.
    pub fn http(index: u16) -> Upstream {
        let mut up = Self::create(index);
        up.serve_http(8080);
        up
    }

    /// Starts an HTTP server on `port` (all addresses) in the namespace. It
    /// answers every GET with JSON naming the path and the client address.
    pub fn serve_http(&mut self, port: u16) {
        let script = r#"
import http.server, json, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "client": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
s = S(("::", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"#;
        self.spawn(&["/usr/bin/python3", "-c", script, &port.to_string()]);
    }

    /// Runs a server in the namespace; it must print `ready` once it
    /// listens. It is killed when the upstream is dropped.
    pub fn spawn(&mut self, argv: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        assert!(
            wait_for_line(&lines, Duration::from_secs(10), |l| l == "ready").is_some(),
            "upstream server {argv:?} did not start"
        );
        self.servers.push(child);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// The JSON lines a workload printed, one per attempt or reply; there
/// must be `expected` of them.
pub fn json_lines(out: &Output, expected: usize) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        lines.len(),
        expected,
        "every attempt reports: {}{}",
        stdout(out),
        stderr(out)
    );
    lines
}

/// Writes `target/adversarial/NAME`, a record the adversarial report of
/// `cargo xtask test` sums up.
pub fn write_adversarial_record(name: &str, value: &serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/adversarial");
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    std::fs::write(dir.join(name), text).unwrap();
}

/// Where `secret` shows in what a person or an agent could read of an
/// agent rooted at `root`: the `stderr` lines given, and the files of its
/// log and state directories. Empty when it shows nowhere.
pub fn secret_sightings(root: &Path, stderr: &[String], secret: &str) -> Vec<String> {
    let mut seen: Vec<String> = stderr
        .iter()
        .filter(|line| line.contains(secret))
        .map(|line| format!("agent stderr: {line}"))
        .collect();
    let mut stack = vec![root.join("log"), root.join("state")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
            {
                seen.push(format!("file {}", path.display()));
            }
        }
    }
    seen
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's `time.monotonic()`,
/// so a harness and its workload can order events between them.
pub fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Bound for waiting on asynchronous effects (audit lines, log lines).
pub const WAIT: Duration = Duration::from_secs(10);

/// Reading OCSF events.
pub mod ocsf {
    use serde_json::Value;

    /// The executable an event attributes the connection to.
    pub fn binary(e: &Value) -> &str {
        e["actor"]["process"]["file"]["path"]
            .as_str()
            .unwrap_or_default()
    }

    /// A Network Activity event with this action (1 allowed, 2 denied).
    pub fn is_net(e: &Value, action: u64) -> bool {
        e["class_uid"] == 4001 && e["action_id"] == action
    }

    pub fn is_allowed(e: &Value) -> bool {
        is_net(e, 1)
    }

    pub fn is_denied(e: &Value) -> bool {
        is_net(e, 2)
    }
}

/// An agent and an HTTPS stand-in for a REST API: TLS on 8443 and plain
/// HTTP on 8080 for `api.example.test` (and `other.example.test`, which
/// tests leave out of policies), with its own CA that the agent trusts
/// through `upstream_extra_roots`. Sandbox `demo` runs under `policy`.
pub struct RestFixture {
    pub agent: Agent,
    pub upstream: Upstream,
    /// `ca.pem`, `cert.pem`, `key.pem` of the stand-in.
    pub certs: PathBuf,
}

impl RestFixture {
    /// `upstream_bin` is the `e2e-upstream` binary; `create_args` go to
    /// `sandbox create demo` after `--policy`.
    pub fn start(
        upstream_bin: &str,
        name: &str,
        index: u16,
        policy: &str,
        create_args: &[&str],
    ) -> RestFixture {
        Self::serving(
            upstream_bin,
            name,
            index,
            policy,
            create_args,
            &["api.example.test", "other.example.test"],
            (8443, 8080),
        )
    }

    /// `start`, with the stand-in answering for `hosts` on the (TLS,
    /// plain) ports.
    pub fn serving(
        upstream_bin: &str,
        name: &str,
        index: u16,
        policy: &str,
        create_args: &[&str],
        hosts: &[&str],
        (tls_port, plain_port): (u16, u16),
    ) -> RestFixture {
        let certs = PathBuf::from(format!("/tmp/portcullis-e2e/{name}-certs"));
        let _ = std::fs::remove_dir_all(&certs);
        std::fs::create_dir_all(&certs).unwrap();
        let out = Command::new(upstream_bin)
            .arg("gen-certs")
            .arg(&certs)
            .args(hosts)
            .output()
            .unwrap();
        assert!(out.status.success(), "gen-certs: {}", stderr(&out));
        let mut upstream = Upstream::create(index);
        let (tls_port, plain_port) = (tls_port.to_string(), plain_port.to_string());
        upstream.spawn(&[
            upstream_bin,
            "serve",
            "--tls-port",
            &tls_port,
            "--plain-port",
            &plain_port,
            "--cert",
            certs.to_str().unwrap(),
        ]);
        let hosts: Vec<(&str, &str)> = hosts.iter().map(|h| (*h, upstream.ip4.as_str())).collect();
        let extra = format!("upstream_extra_roots:\n  - {}/ca.pem\n", certs.display());
        let agent = Agent::start_with(name, index, &hosts, &extra);
        let path = agent.write_policy("policy.yaml", policy);
        let mut args = vec![
            "sandbox",
            "create",
            "demo",
            "--policy",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(create_args);
        agent.ok(&args);
        RestFixture {
            agent,
            upstream,
            certs,
        }
    }
}
