//! `cargo xtask bench`: what transparent capture costs, measured against
//! the direct path in the same run (these machines are noisy, so only
//! ratios are judged; absolute figures are shown, never asserted).
//!
//! One binary, two kinds of role:
//! - the workload roles in [`workload`] (`serve`, `bulk`, `newconn`,
//!   `idle`, `first-tls`), run directly or inside the sandbox;
//! - no role: the driver. It starts an upstream in a test network
//!   namespace, an agent with a sandbox, runs each scenario of the
//!   benchmark issue on both paths, prints a table with the targets and
//!   writes it as JSON under `target/bench/`.
//!
//! Driver options: `--only 1,4,7` runs some scenarios; `--seconds N` sets
//! each load run's length (default 6); `--perf N` records a perf profile
//! of the agent during scenario N's sandboxed run (report next to the
//! JSON). Scenario 6 (decision micro-benchmarks) is read from criterion's
//! results, which `cargo xtask bench` produces first.

mod probe;
mod report;
mod tools;
mod workload;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use portcullis_e2e::{Agent, RestFixture, portcullis_bin, wait_for_line};
use report::{Outcome, Report, Row};
use serde_json::json;
use tools::Load;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize| arg(i).parse::<u64>().expect("a number");
    match arg(0) {
        "serve" => workload::serve(number(1) as u16),
        "bulk" => workload::bulk(arg(1), number(2)),
        "newconn" => workload::newconn(arg(1), arg(2), number(3)),
        "idle" => workload::idle(arg(1), arg(2), number(3)),
        "first-tls" => workload::first_tls(number(1) as u16, arg(2), &args[3..]),
        _ => std::process::exit(drive(&args)),
    }
}

// Scenario names, as the report and the JSON show them.
const L4: &str = "1 L4 throughput";
const KEEPALIVE: &str = "2 L7 keep-alive";
const NEWCONN: &str = "3 new connections";
const TLS: &str = "4 TLS keep-alive";
const FIRST: &str = "4 first request, new host";
const H2: &str = "5 HTTP/2";
const DECISION: &str = "6 policy decision";
const FOOTPRINT: &str = "7 footprint";
const SQUID: &str = "8 squid peer";

/// Bytes echoed each way in scenario 1.
const BULK_BYTES: u64 = 1 << 30;
const NEW_CONNECTIONS: u64 = 2000;
const IDLE_CONNECTIONS: u64 = 1000;
const H2_REQUESTS: u64 = 40_000;
/// Hosts whose leaf certificate the proxy has not minted yet.
const MINT_HOSTS: usize = 20;

struct Options {
    only: Option<Vec<u8>>,
    seconds: u32,
    perf: Option<u8>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            only: None,
            seconds: 6,
            perf: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{flag} needs a value"))
                    .cloned()
            };
            match flag.as_str() {
                "--only" => {
                    let list = value()?;
                    let parsed: Result<Vec<u8>, _> =
                        list.split(',').map(|s| s.trim().parse::<u8>()).collect();
                    opts.only = Some(parsed.map_err(|_| {
                        format!("--only {list}: expected scenario numbers 1-8, like --only 1,4")
                    })?);
                }
                "--seconds" => {
                    let v = value()?;
                    opts.seconds = v
                        .parse()
                        .ok()
                        .filter(|s| (1..=120).contains(s))
                        .ok_or(format!("--seconds {v}: expected 1 to 120"))?;
                }
                "--perf" => {
                    let v = value()?;
                    opts.perf = Some(
                        v.parse()
                            .map_err(|_| format!("--perf {v}: expected a scenario number"))?,
                    );
                }
                other => {
                    return Err(format!(
                        "unknown option {other}; options: --only 1,2,.. --seconds N --perf N"
                    ));
                }
            }
        }
        Ok(opts)
    }

    fn runs(&self, scenario: u8) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&scenario))
    }
}

/// One scenario: it measures and adds its rows and verdicts.
type Scenario = fn(&mut Bench, &mut Report);

/// Everything the scenarios share: the upstream and the agents.
struct Bench {
    me: PathBuf,
    fixture: RestFixture,
    /// A second agent with `relay: copy`, for scenario 1's other relay.
    copy_agent: Agent,
    agent_pid: u32,
    certs: PathBuf,
    out_dir: PathBuf,
    seconds: u32,
    perf: Option<u8>,
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
    /// Scenario 2's sandboxed req/s, for the squid comparison.
    keepalive_rps: Option<f64>,
}

fn drive(args: &[String]) -> i32 {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            return 2;
        }
    };
    if !portcullis_e2e::privileged() {
        eprintln!("bench: needs root, cgroup v2 and BPF (see README)");
        return 2;
    }
    raise_fd_limit();
    // The agent logs as in production: no per-connection debug lines.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("PORTCULLIS_E2E_LOG", "info") };
    let mut report = Report::default();
    let bench = Bench::start(&opts);
    let started = std::time::Instant::now();
    println!(
        "bench: upstream in netns {} ({}), agent pid {}, {} s per load run",
        bench.fixture.upstream.netns, bench.fixture.upstream.ip4, bench.agent_pid, opts.seconds
    );
    println!("{}", report::header());
    let scenarios: [(u8, Scenario); 8] = [
        (1, Bench::l4_throughput),
        (2, Bench::keepalive),
        (3, Bench::new_connections),
        (4, Bench::tls),
        (5, Bench::h2),
        (6, Bench::decisions),
        (7, Bench::footprint),
        (8, Bench::squid),
    ];
    let mut bench = bench;
    for (number, scenario) in scenarios {
        if opts.runs(number) {
            scenario(&mut bench, &mut report);
        }
    }
    report.print();
    let context = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_seconds": opts.seconds,
        "bench_seconds": started.elapsed().as_secs_f64(),
        "relay": "splice (default); copy shown in scenario 1",
    });
    let stamp = stamp();
    match report.write(&bench.out_dir, &stamp, context) {
        Ok(path) => println!("bench: wrote {}", path.display()),
        Err(e) => eprintln!("bench: writing the report: {e}"),
    }
    // The agents' directories hold hundreds of MB of audit log after a
    // run; nothing of the run is kept but the report.
    let leftovers = [
        bench.fixture.agent.root.clone(),
        bench.copy_agent.root.clone(),
        bench.certs.clone(),
        PathBuf::from("/tmp/portcullis-bench"),
    ];
    drop(bench);
    for dir in leftovers {
        let _ = std::fs::remove_dir_all(dir);
    }
    if report.errors.is_empty() { 0 } else { 1 }
}

impl Bench {
    fn start(opts: &Options) -> Bench {
        let me = std::env::current_exe().unwrap();
        let upstream_bin = me.with_file_name("e2e-upstream");
        assert!(
            upstream_bin.is_file(),
            "{} is missing: build the portcullis-e2e binaries first",
            upstream_bin.display()
        );
        let mut hosts: Vec<String> = ["bench.test", "echo.bench.test", "l4.bench.test"]
            .map(String::from)
            .to_vec();
        hosts.extend((0..MINT_HOSTS).map(mint_host));
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let policy = format!(
            "version: 1
network_policies:
  echo:
    endpoints:
      - host: echo.bench.test
        port: 9000
    binaries:
      - path: {me}
  relay:
    endpoints:
      - host: l4.bench.test
        port: 8080
    binaries:
      - path: /usr/bin/wrk
  web:
    endpoints:
      - host: bench.test
        port: 8080
        protocol: rest
        enforcement: enforce
        access: read-only
      - host: bench.test
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
      - host: \"*.bench.test\"
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
        allowed_ips: [{ip}]
    binaries:
      - path: /usr/bin/wrk
      - path: /usr/bin/h2load
      - path: {me}
",
            me = me.display(),
            ip = upstream_ip(60),
        );
        let mut fixture = RestFixture::serving(
            upstream_bin.to_str().unwrap(),
            "bench",
            60,
            &policy,
            &[],
            &host_refs,
            (8443, 8080),
        );
        fixture
            .upstream
            .spawn(&[me.to_str().unwrap(), "serve", "9000"]);
        let ip = fixture.upstream.ip4.clone();
        let copy_agent = Agent::start_with(
            "bench-copy",
            61,
            &[("echo.bench.test", &ip)],
            "relay: copy\n",
        );
        let path = copy_agent.write_policy("bench.yaml", &policy);
        copy_agent.ok(&[
            "sandbox",
            "create",
            "demo",
            "--policy",
            path.to_str().unwrap(),
        ]);
        let agent_pid = fixture.agent.pid().expect("the agent runs");
        let out_dir = std::env::var_os("PORTCULLIS_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| me.parent().unwrap().parent().unwrap().join("bench"));
        Bench {
            certs: fixture.certs.clone(),
            me,
            fixture,
            copy_agent,
            agent_pid,
            out_dir,
            seconds: opts.seconds,
            perf: opts.perf,
            wrk: tools::which("wrk"),
            h2load: tools::which("h2load"),
            keepalive_rps: None,
        }
    }

    fn ip(&self) -> &str {
        &self.fixture.upstream.ip4
    }

    fn me(&self) -> &str {
        self.me.to_str().unwrap()
    }

    /// A command on the direct path, bounded in time.
    fn direct(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"]).args(argv);
        cmd
    }

    /// A command in the sandbox of `agent`, bounded in time.
    fn sandboxed(&self, agent: &Agent, argv: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120"])
            .arg(portcullis_bin())
            .arg("--config")
            .arg(&agent.config)
            .args(["run", "--sandbox", "demo", "--"])
            .args(argv);
        cmd
    }

    /// Runs a workload role and parses its JSON line.
    fn workload(&self, mut cmd: Command) -> Result<Sample, String> {
        let out = tools::run(&mut cmd)?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| format!("workload printed {out:?}: {e}"))?;
        Ok(Sample {
            seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
            p50_us: v["p50_us"].as_f64(),
            p99_us: v["p99_us"].as_f64(),
        })
    }

    /// Runs the sandboxed side of a scenario under a perf profile when
    /// `--perf` asked for this scenario.
    fn profiled<T>(&self, scenario: u8, run: impl FnOnce() -> T) -> T {
        if self.perf != Some(scenario) {
            return run();
        }
        let data = self.out_dir.join(format!("perf-{scenario}.data"));
        std::fs::create_dir_all(&self.out_dir).ok();
        let recorder = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(&data)
            .args(["-p", &self.agent_pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let result = run();
        match recorder {
            Ok(child) => {
                // SAFETY: signalling a child we own.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait_with_output();
                let text = self.out_dir.join(format!("perf-{scenario}.txt"));
                let out = Command::new("perf")
                    .args(["report", "--stdio", "--no-children", "-g", "none"])
                    .args(["--percent-limit", "0.5", "--sort", "dso,symbol", "-i"])
                    .arg(&data)
                    .output();
                if let Ok(out) = out {
                    let _ = std::fs::write(&text, &out.stdout);
                    println!("  perf profile of the agent: {}", text.display());
                }
            }
            Err(e) => eprintln!("bench: perf not available ({e}); no profile"),
        }
        result
    }

    // -- scenario 1 -------------------------------------------------------

    fn l4_throughput(&mut self, report: &mut Report) {
        let bytes = BULK_BYTES.to_string();
        let direct_addr = format!("{}:9000", self.ip());
        let direct = self.workload(self.direct(&[self.me(), "bulk", &direct_addr, &bytes]));
        let Ok(direct) = direct.map_err(|e| report.error(L4, e)) else {
            return;
        };
        let rate = |s: &Sample| BULK_BYTES as f64 / s.seconds / 1e6;
        report.row(Row::new(L4, "direct", rate(&direct), "MB/s").ratio(1.0));
        let mut splice_ratio = None;
        for (path, agent) in [
            ("sandbox (splice relay)", &self.fixture.agent),
            ("sandbox (copy relay)", &self.copy_agent),
        ] {
            let argv = [self.me(), "bulk", "echo.bench.test:9000", &bytes];
            let run = || self.workload(self.sandboxed(agent, &argv));
            let sample = if path.contains("splice") {
                self.profiled(1, run)
            } else {
                run()
            };
            match sample {
                Ok(s) => {
                    let ratio = direct.seconds / s.seconds;
                    splice_ratio.get_or_insert(ratio);
                    report.row(Row::new(L4, path, rate(&s), "MB/s").ratio(ratio));
                }
                Err(e) => report.error(L4, e),
            }
        }
        report.verdict(L4, "ratio >= 0.8", ratio_outcome(splice_ratio, 0.8));
    }

    // -- scenario 2 -------------------------------------------------------

    fn keepalive(&mut self, report: &mut Report) {
        let Some(wrk) = self.wrk.clone() else {
            return not_installed(report, KEEPALIVE, "req/s ratio >= 0.5", "wrk");
        };
        let wrk = wrk.to_str().unwrap();
        let host = ["-H".to_string(), "Host: bench.test".to_string()];
        let direct_url = format!("http://{}:8080/bench", self.ip());
        let direct = self.wrk(self.direct(&[wrk]), &direct_url, &host);
        let Ok(direct) = direct.map_err(|e| report.error(KEEPALIVE, e)) else {
            return;
        };
        report.row(load_row(KEEPALIVE, "direct", &direct, &direct));
        let watch = probe::Watch::start(self.agent_pid);
        let sandboxed = self.profiled(2, || {
            self.wrk(
                self.sandboxed(&self.fixture.agent, &[wrk]),
                "http://bench.test:8080/bench",
                &[],
            )
        });
        let window = watch.finish();
        // The same load through an L4-only endpoint: what relaying alone
        // costs, the floor under any inspecting proxy on this machine.
        let relayed = self.wrk(
            self.sandboxed(&self.fixture.agent, &[wrk]),
            "http://l4.bench.test:8080/bench",
            &[],
        );
        match relayed {
            Ok(load) => report.row(load_row(
                KEEPALIVE,
                "sandbox (L4 relay only)",
                &load,
                &direct,
            )),
            Err(e) => report.error(KEEPALIVE, e),
        }
        let judged = judge_load(
            report,
            (KEEPALIVE, "req/s ratio >= 0.5", 0.5),
            "sandbox (L7 inspected)",
            &direct,
            sandboxed,
        );
        if let Some(load) = judged {
            for row in footprint_rows("scenario 2", window) {
                report.row(row);
            }
            self.keepalive_rps = Some(load.per_second);
        }
    }

    fn wrk(&self, mut cmd: Command, url: &str, extra: &[String]) -> Result<Load, String> {
        cmd.args(tools::wrk_args(url, self.seconds, extra));
        tools::parse_wrk(&tools::run(&mut cmd)?)
    }

    // -- scenario 3 -------------------------------------------------------

    fn new_connections(&mut self, report: &mut Report) {
        let n = NEW_CONNECTIONS.to_string();
        let direct_addr = format!("{}:8080", self.ip());
        let direct =
            self.workload(self.direct(&[self.me(), "newconn", &direct_addr, "bench.test", &n]));
        let Ok(direct) = direct.map_err(|e| report.error(NEWCONN, e)) else {
            return;
        };
        let rate = |s: &Sample| NEW_CONNECTIONS as f64 / s.seconds;
        report.row(
            Row::new(NEWCONN, "direct", rate(&direct), "conn/s")
                .ratio(1.0)
                .latency(direct.p50_us, direct.p99_us),
        );
        let argv = [self.me(), "newconn", "bench.test:8080", "bench.test", &n];
        let sample = self.profiled(3, || {
            self.workload(self.sandboxed(&self.fixture.agent, &argv))
        });
        match sample {
            Ok(s) => {
                let ratio = direct.seconds / s.seconds;
                report.row(
                    Row::new(NEWCONN, "sandbox (L7 inspected)", rate(&s), "conn/s")
                        .ratio(ratio)
                        .latency(s.p50_us, s.p99_us),
                );
                report.verdict(
                    NEWCONN,
                    "conn/s ratio >= 0.4",
                    ratio_outcome(Some(ratio), 0.4),
                );
            }
            Err(e) => report.error(NEWCONN, e),
        }
    }

    // -- scenario 4 -------------------------------------------------------

    fn tls(&mut self, report: &mut Report) {
        self.tls_keepalive(report);
        self.first_request(report);
    }

    fn tls_keepalive(&mut self, report: &mut Report) {
        let Some(wrk) = self.wrk.clone() else {
            return not_installed(report, TLS, "req/s ratio >= 0.4", "wrk");
        };
        let wrk = wrk.to_str().unwrap();
        let host = ["-H".to_string(), "Host: bench.test".to_string()];
        let direct_url = format!("https://{}:8443/bench", self.ip());
        let direct = self.wrk(self.direct(&[wrk]), &direct_url, &host);
        let Ok(direct) = direct.map_err(|e| report.error(TLS, e)) else {
            return;
        };
        report.row(load_row(TLS, "direct https", &direct, &direct));
        let sandboxed = self.profiled(4, || {
            self.wrk(
                self.sandboxed(&self.fixture.agent, &[wrk]),
                "https://bench.test:8443/bench",
                &[],
            )
        });
        judge_load(
            report,
            (TLS, "req/s ratio >= 0.4", 0.4),
            "sandbox (TLS terminated)",
            &direct,
            sandboxed,
        );
    }

    /// A fresh TLS connection and one GET per host: to hosts the proxy has
    /// not seen (a leaf is minted), then to the same hosts again (the leaf
    /// is cached). The difference of the medians is the minting cost.
    fn first_request(&mut self, report: &mut Report) {
        let target = "first request <= 5 ms extra";
        let ca = self.certs.join("ca.pem");
        let ip = self.ip().to_string();
        let direct_hosts: Vec<String> = (0..MINT_HOSTS)
            .map(|i| format!("{}={ip}", mint_host(i)))
            .collect();
        let sandbox_hosts: Vec<String> = (0..MINT_HOSTS).map(mint_host).collect();
        let run = |mut cmd: Command, hosts: &[String]| {
            cmd.args(hosts);
            self.workload(cmd)
        };
        let direct = run(
            self.direct(&[self.me(), "first-tls", "8443", ca.to_str().unwrap()]),
            &direct_hosts,
        );
        let sandbox_cmd =
            || self.sandboxed(&self.fixture.agent, &[self.me(), "first-tls", "8443", "-"]);
        let first = run(sandbox_cmd(), &sandbox_hosts);
        let again = run(sandbox_cmd(), &sandbox_hosts);
        match (direct, first, again) {
            (Ok(direct), Ok(first), Ok(again)) => {
                let p50 = |s: &Sample| s.p50_us.unwrap_or(f64::NAN);
                let row = |path: &str, s: &Sample| {
                    Row::new(FIRST, path, p50(s) / 1000.0, "ms p50")
                        .ratio(p50(&direct) / p50(s))
                        .latency(s.p50_us, s.p99_us)
                };
                report.row(row("direct, new connection", &direct));
                report.row(row("sandbox, leaf minted", &first));
                report.row(row("sandbox, leaf cached", &again));
                let extra_ms = (p50(&first) - p50(&again)) / 1000.0;
                report.verdict(
                    FIRST,
                    target,
                    Outcome::judge(
                        extra_ms,
                        5.0,
                        false,
                        format!(
                            "{extra_ms:.2} ms (minted {:.2} ms vs cached {:.2} ms p50; direct {:.2} ms)",
                            p50(&first) / 1000.0,
                            p50(&again) / 1000.0,
                            p50(&direct) / 1000.0
                        ),
                    ),
                );
            }
            (d, f, a) => {
                for e in [d.err(), f.err(), a.err()].into_iter().flatten() {
                    report.error(FIRST, e);
                }
            }
        }
    }

    // -- scenario 5 -------------------------------------------------------

    fn h2(&mut self, report: &mut Report) {
        let Some(h2load) = self.h2load.clone() else {
            return not_installed(report, H2, "req/s ratio >= 0.4", "h2load (nghttp2-client)");
        };
        let h2load = h2load.to_str().unwrap();
        let h2 = |mut cmd: Command, url: &str| {
            cmd.args(tools::h2load_args(url, H2_REQUESTS, &[]));
            tools::run(&mut cmd).and_then(|out| tools::parse_h2load(&out))
        };
        let direct_url = format!("https://{}:8443/bench", self.ip());
        let Ok(direct) = h2(self.direct(&[h2load]), &direct_url).map_err(|e| report.error(H2, e))
        else {
            return;
        };
        report.row(load_row(H2, "direct h2", &direct, &direct));
        let sandboxed = self.profiled(5, || {
            h2(
                self.sandboxed(&self.fixture.agent, &[h2load]),
                "https://bench.test:8443/bench",
            )
        });
        judge_load(
            report,
            (H2, "req/s ratio >= 0.4", 0.4),
            "sandbox h2 (TLS terminated)",
            &direct,
            sandboxed,
        );
    }

    // -- scenario 6 -------------------------------------------------------

    fn decisions(&mut self, report: &mut Report) {
        let dir = std::env::var_os("PORTCULLIS_CRITERION_DIR").map(PathBuf::from);
        let median = |group: &str, rules: u32| -> Option<f64> {
            let path = dir
                .as_ref()?
                .join(group)
                .join(rules.to_string())
                .join("new/estimates.json");
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            v["median"]["point_estimate"].as_f64()
        };
        let mut at_10k = Vec::new();
        for (group, label) in [("l4_decision", "L4"), ("l7_decision", "L7")] {
            for rules in [10, 10_000] {
                match median(group, rules) {
                    Some(ns) => {
                        let path = format!("{label} decision, {rules} rules");
                        report.row(Row::new(DECISION, &path, ns, "ns p50"));
                        if rules == 10_000 {
                            at_10k.push((label, ns));
                        }
                    }
                    None => report.error(
                        DECISION,
                        format!(
                            "no criterion estimate for {group}/{rules}: run through `cargo xtask bench`"
                        ),
                    ),
                }
            }
        }
        let outcome = if at_10k.len() == 2 {
            let worst = at_10k.iter().map(|(_, ns)| *ns).fold(0.0, f64::max);
            let shown = at_10k
                .iter()
                .map(|(l, ns)| format!("{l} {:.2} us", ns / 1000.0))
                .collect::<Vec<_>>()
                .join(", ");
            Outcome::judge(worst / 1000.0, 2.0, false, shown)
        } else {
            Outcome::NotMeasured("criterion results missing".into())
        };
        report.verdict(DECISION, "<= 2 us p50 at 10,000 rules", outcome);
    }

    // -- scenario 7 -------------------------------------------------------

    fn footprint(&mut self, report: &mut Report) {
        let target = "<= 64 MiB RSS at 1,000 conns";
        let before = probe::usage(self.agent_pid);
        let n = IDLE_CONNECTIONS.to_string();
        let mut child = match self
            .sandboxed(
                &self.fixture.agent,
                &[self.me(), "idle", "bench.test:8080", "bench.test", &n],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return report.error(FOOTPRINT, e.to_string()),
        };
        let lines = portcullis_e2e::lines_of(child.stdout.take().unwrap());
        let ready = wait_for_line(&lines, Duration::from_secs(60), |l| l.starts_with("ready"));
        let held = probe::usage(self.agent_pid);
        let connections = count_connections(self.agent_pid);
        close_stdin_and_wait(child);
        if ready.is_none() {
            return report.error(
                FOOTPRINT,
                format!("the idle workload did not open {n} connections within 60 s"),
            );
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        report.row(Row::new(
            FOOTPRINT,
            "agent RSS, before",
            mib(before.rss_kib),
            "MiB",
        ));
        report.row(Row::new(
            FOOTPRINT,
            &format!("agent RSS, {n} idle conns"),
            mib(held.rss_kib),
            "MiB",
        ));
        report.row(Row::new(
            FOOTPRINT,
            "agent CPU to open them",
            held.cpu_seconds - before.cpu_seconds,
            "cpu s",
        ));
        report.row(Row::new(
            FOOTPRINT,
            "agent TCP sockets held",
            connections as f64,
            "fds",
        ));
        report.verdict(
            FOOTPRINT,
            target,
            Outcome::judge(
                mib(held.rss_kib),
                64.0,
                false,
                format!(
                    "{:.1} MiB ({:.1} MiB before, {} sockets)",
                    mib(held.rss_kib),
                    mib(before.rss_kib),
                    connections
                ),
            ),
        );
    }

    // -- scenario 8 -------------------------------------------------------

    fn squid(&mut self, report: &mut Report) {
        let target = "Portcullis >= 5x squid req/s";
        let (Some(squid), Some(wrk)) = (tools::which("squid"), self.wrk.clone()) else {
            return not_installed(report, SQUID, target, "squid and wrk");
        };
        let squid =
            match tools::Squid::start(&squid, Path::new("/tmp/portcullis-bench/squid"), 21790) {
                Ok(s) => s,
                Err(e) => return report.error(SQUID, e),
            };
        let target_url = format!("http://{}:8080/bench", self.ip());
        let script = match squid.wrk_script(&target_url) {
            Ok(s) => s,
            Err(e) => return report.error(SQUID, e),
        };
        let extra = ["-s".to_string(), script.display().to_string()];
        let direct_url = format!("http://{}:8080/bench", self.ip());
        let host = ["-H".to_string(), "Host: bench.test".to_string()];
        let direct = self.wrk(self.direct(&[wrk.to_str().unwrap()]), &direct_url, &host);
        let through = self.wrk(
            self.direct(&[wrk.to_str().unwrap()]),
            &format!("http://127.0.0.1:{}/", squid.port),
            &extra,
        );
        drop(squid);
        match (direct, through) {
            (Ok(direct), Ok(load)) => {
                report.row(load_row(SQUID, "direct", &direct, &direct));
                report.row(load_row(SQUID, "squid explicit proxy", &load, &direct));
                let outcome = match self.keepalive_rps {
                    Some(ours) => {
                        let times = ours / load.per_second;
                        Outcome::judge(
                            times,
                            5.0,
                            true,
                            format!(
                                "{times:.2}x ({ours:.0} vs {:.0} req/s; squid is {:.3} of direct)",
                                load.per_second,
                                load.per_second / direct.per_second
                            ),
                        )
                    }
                    None => Outcome::NotMeasured("scenario 2 did not run".into()),
                };
                report.verdict(SQUID, target, outcome);
            }
            (d, t) => {
                for e in [d.err(), t.err()].into_iter().flatten() {
                    report.error(SQUID, e);
                }
            }
        }
    }
}

struct Sample {
    seconds: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

/// The upstream's address in the namespace `RestFixture` makes for
/// `index` (see `Upstream::create`); the policy needs it before then.
fn upstream_ip(index: u16) -> String {
    format!("203.0.113.{}", index * 4 + 2)
}

fn mint_host(i: usize) -> String {
    format!("mint{i}.bench.test")
}

fn load_row(scenario: &'static str, path: &str, load: &Load, direct: &Load) -> Row {
    Row::new(scenario, path, load.per_second, "req/s")
        .ratio(load.per_second / direct.per_second)
        .latency(load.p50_us, load.p99_us)
}

/// Records a sandboxed load run against its direct baseline and judges
/// the req/s ratio against the (scenario, target, lower bound); returns
/// the run when it succeeded.
fn judge_load(
    report: &mut Report,
    (scenario, target, bound): (&'static str, &'static str, f64),
    path: &str,
    direct: &Load,
    sandboxed: Result<Load, String>,
) -> Option<Load> {
    match sandboxed {
        Ok(load) => {
            report.row(load_row(scenario, path, &load, direct));
            let ratio = load.per_second / direct.per_second;
            report.verdict(scenario, target, ratio_outcome(Some(ratio), bound));
            Some(load)
        }
        Err(e) => {
            report.error(scenario, e);
            None
        }
    }
}

/// The agent's peak RSS and CPU use during a window of load.
fn footprint_rows(during: &str, w: probe::Window) -> [Row; 2] {
    [
        Row::new(
            FOOTPRINT,
            &format!("agent peak RSS, {during}"),
            w.peak_rss_kib as f64 / 1024.0,
            "MiB",
        ),
        Row::new(
            FOOTPRINT,
            &format!("agent CPU, {during}"),
            w.cpu_seconds / w.wall_seconds,
            "cores",
        ),
    ]
}

fn ratio_outcome(ratio: Option<f64>, bound: f64) -> Outcome {
    match ratio {
        Some(r) => Outcome::judge(r, bound, true, format!("{r:.3}")),
        None => Outcome::NotMeasured("no sandboxed run".into()),
    }
}

fn not_installed(report: &mut Report, scenario: &'static str, target: &'static str, what: &str) {
    report.verdict(
        scenario,
        target,
        Outcome::NotMeasured(format!(
            "{what} not installed (`cargo xtask bench` installs it)"
        )),
    );
}

/// TCP sockets the agent holds open, from /proc/PID/fd.
fn count_connections(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn close_stdin_and_wait(mut child: Child) {
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = child.wait();
}

/// 1,000 connections need about 3,000 descriptors across the processes;
/// raise the soft limit to the hard one, which children inherit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// UTC time for file names, from `date` (no time crate in this package).
fn stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
