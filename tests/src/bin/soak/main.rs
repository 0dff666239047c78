//! `cargo xtask soak --minutes N`: an agent under mixed allowed and denied
//! traffic, policy reloads and proposals for N minutes, while its RSS,
//! open file descriptors and kernel map entries are sampled. They must
//! stay flat: the driver prints the samples and their slopes per minute,
//! judges them against the bounds in [`verdict`] and writes
//! `soak.json` for the adversarial report (`PORTCULLIS_SOAK_OUT`, by
//! default `target/adversarial/`).
//!
//! Options: `--minutes N` (default 5, fractions allowed), `--rate N`
//! workload operations a second (default 200).

mod report;
mod status;
mod verdict;
mod workload;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::mpsc,
    time::{Duration, Instant},
};

use portcullis_e2e::{Agent, Upstream, stderr, stdout};
use status::{AgentStatus, Process};
use verdict::{Run, Sample, Slopes};
use workload::Progress;

/// Harness index: netns `pc-e2e-up50`, proxy port 21500.
const INDEX: u16 = 50;
const NAME: &str = "soak";
const SANDBOX: &str = "box";
const HOST: &str = "api.example.test";
const PORT: u16 = 8080;
const PYTHON: &str = "/usr/bin/python3";

const SAMPLE_EVERY: u64 = 5;
const RELOAD_EVERY: u64 = 3;
/// How long the workload may take past its deadline to report its totals
/// (its requests time out after 10 s, a proposal after 30 s).
const WORKLOAD_GRACE: Duration = Duration::from_secs(40);
/// Pause between the workload's end and the sample that shows what an idle
/// agent still holds.
const SETTLE: Duration = Duration::from_secs(5);
/// Agent stderr lines kept to explain a death.
const STDERR_TAIL: usize = 20;

/// Both allow python3 `GET /public/**` on the upstream and nothing else;
/// they differ so that each reload is a new revision.
const POLICIES: [&str; 2] = [
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
          - allow:
              method: HEAD
              path: /public/**
    binaries:
      - path: /usr/bin/python3*
",
];

#[derive(Debug, PartialEq)]
struct Options {
    minutes: f64,
    rate: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            minutes: 5.0,
            rate: 200,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--minutes" => {
                    opts.minutes = value
                        .parse()
                        .ok()
                        .filter(|m: &f64| *m > 0.0 && *m <= 24.0 * 60.0)
                        .ok_or(format!(
                            "--minutes {value}: expected more than 0, at most 1440"
                        ))?;
                }
                "--rate" => {
                    opts.rate = value
                        .parse()
                        .ok()
                        .filter(|r| (1..=5000).contains(r))
                        .ok_or(format!(
                            "--rate {value}: expected 1 to 5000 operations a second"
                        ))?;
                }
                other => {
                    return Err(format!(
                        "unknown option {other}; options: --minutes N --rate N"
                    ));
                }
            }
        }
        Ok(opts)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(drive(&args));
}

fn drive(args: &[String]) -> i32 {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return 2;
        }
    };
    if !portcullis_e2e::privileged() {
        eprintln!("soak: needs root, cgroup v2 and BPF (see README)");
        return 2;
    }
    // The agent logs as in production: no per-query debug lines.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("PORTCULLIS_E2E_LOG", "info") };
    let me = std::env::current_exe().expect("the driver's path");
    let out_dir = std::env::var_os("PORTCULLIS_SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| me.parent().unwrap().parent().unwrap().join("adversarial"));

    let up = Upstream::http(INDEX);
    let agent = Agent::start_with(NAME, INDEX, &[(HOST, up.ip4.as_str())], "");
    let root = agent.root.clone();
    let policies = [
        agent.write_policy("policy-a.yaml", POLICIES[0]),
        agent.write_policy("policy-b.yaml", POLICIES[1]),
    ];
    agent.ok(&[
        "sandbox",
        "create",
        SANDBOX,
        "--policy",
        policies[0].to_str().unwrap(),
    ]);
    let pid = agent.pid().expect("the agent runs");
    println!(
        "soak: {} min at about {} operations/s; agent pid {pid}, upstream in netns {} ({}); \
         a sample every {SAMPLE_EVERY} s, a reload every {RELOAD_EVERY} s, a proposal every 10 s",
        opts.minutes, opts.rate, up.netns, up.ip4
    );

    let soak = Soak::run(&agent, pid, &policies, &opts);

    let warmup = verdict::warmup(&soak.samples);
    let slopes = Slopes::of(&soak.samples[warmup..]);
    let verdict = verdict::judge(&slopes, soak.samples.len() - warmup, &soak.run);
    if let Some(after) = &soak.after {
        println!("after the workload, idle {} s:", SETTLE.as_secs());
        println!(
            "{}",
            report::row(after, soak.run.workload.requests, soak.run.reloads)
        );
    }
    for line in report::summary(
        opts.minutes,
        &soak.samples,
        warmup,
        &slopes,
        &soak.run,
        &verdict,
    ) {
        println!("{line}");
    }
    if soak.run.agent_died {
        eprintln!("soak: the agent's last stderr lines:");
        for line in &soak.stderr_tail {
            eprintln!("  {line}");
        }
    }
    let json = report::json(
        opts.minutes,
        &soak.samples,
        soak.after.as_ref(),
        warmup,
        &slopes,
        &soak.run,
        &verdict,
        &utc_now(),
    );
    match report::write(&out_dir, &json) {
        Ok(path) => println!("soak: wrote {}", path.display()),
        Err(e) => eprintln!("soak: writing {}: {e}", out_dir.display()),
    }

    // `down` (in the agent's Drop) stops the workload with the sandbox;
    // the directory holds the run's audit logs, which nobody needs.
    drop(agent);
    drop(up);
    let _ = std::fs::remove_dir_all(root);
    if verdict.passed() { 0 } else { 1 }
}

/// What one run collected.
struct Soak {
    samples: Vec<Sample>,
    /// Taken [`SETTLE`] after the workload ended; not part of the slopes.
    after: Option<Sample>,
    run: Run,
    stderr_tail: VecDeque<String>,
}

impl Soak {
    /// Starts the workload, then ticks once a second on a fixed schedule:
    /// reads the workload's progress, reloads every [`RELOAD_EVERY`] s and
    /// samples every [`SAMPLE_EVERY`] s until the deadline.
    fn run(agent: &Agent, pid: u32, policies: &[PathBuf; 2], opts: &Options) -> Soak {
        let seconds = (opts.minutes * 60.0).round().max(1.0) as u64;
        let (mut child, lines) = agent.spawn_cli(&[
            "run",
            "--sandbox",
            SANDBOX,
            "--",
            PYTHON,
            "-c",
            workload::SCRIPT,
            &seconds.to_string(),
            HOST,
            &PORT.to_string(),
            &opts.rate.to_string(),
        ]);
        let mut soak = Soak {
            samples: Vec::new(),
            after: None,
            run: Run::default(),
            stderr_tail: VecDeque::new(),
        };
        println!("{}", report::header());
        let started = Instant::now();
        for tick in 0..=seconds {
            sleep_until(started + Duration::from_secs(tick));
            soak.read_progress(&lines);
            soak.keep_stderr(agent);
            if tick > 0 && tick % RELOAD_EVERY == 0 {
                soak.reload(agent, &policies[(tick / RELOAD_EVERY % 2) as usize]);
            }
            if tick % SAMPLE_EVERY == 0 || tick == seconds {
                match sample(agent, pid, started.elapsed().as_secs_f64()) {
                    Some(s) => {
                        println!(
                            "{}",
                            report::row(&s, soak.run.workload.requests, soak.run.reloads)
                        );
                        soak.samples.push(s);
                    }
                    None => {
                        soak.run.agent_died = true;
                        break;
                    }
                }
            }
        }
        if !soak.run.agent_died {
            soak.finish_workload(&mut child, &lines);
            std::thread::sleep(SETTLE);
            soak.after = sample(agent, pid, started.elapsed().as_secs_f64());
            soak.run.agent_died = soak.after.is_none();
        }
        soak.keep_stderr(agent);
        let _ = child.kill();
        let _ = child.wait();
        soak
    }

    /// Takes the workload's newest counts; prints anything else it says.
    fn read_progress(&mut self, lines: &mpsc::Receiver<String>) {
        for line in lines.try_iter() {
            self.take_line(&line);
        }
    }

    fn take_line(&mut self, line: &str) {
        match Progress::parse(line) {
            Some(p) => {
                self.run.workload_finished |= p.done;
                self.run.workload = p;
            }
            None => println!("soak: workload: {line}"),
        }
    }

    /// Waits for the workload's last line and its exit.
    fn finish_workload(&mut self, child: &mut Child, lines: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + WORKLOAD_GRACE;
        while !self.run.workload_finished {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match lines.recv_timeout(left) {
                Ok(line) => self.take_line(&line),
                Err(_) => break,
            }
        }
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            println!("soak: workload: `portcullis run` ended with {status}");
        }
    }

    fn reload(&mut self, agent: &Agent, policy: &Path) {
        let out = agent.cli(&[
            "policy",
            "set",
            SANDBOX,
            "--policy",
            policy.to_str().unwrap(),
        ]);
        let said = stdout(&out);
        if out.status.success() && said.contains("loaded") {
            self.run.reloads += 1;
        } else {
            let failure = format!("{}: {}{}", out.status, said.trim(), stderr(&out).trim());
            eprintln!("soak: reload failed: {failure}");
            self.run.reload_failures.push(failure);
        }
    }

    /// Keeps the agent's newest stderr lines, and keeps its pipe drained.
    fn keep_stderr(&mut self, agent: &Agent) {
        for line in agent.stderr_lines() {
            if self.stderr_tail.len() == STDERR_TAIL {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail.push_back(line);
        }
    }
}

/// RSS and descriptors from `/proc`, the rest from `portcullis status`;
/// `None` once the agent is gone.
fn sample(agent: &Agent, pid: u32, seconds: f64) -> Option<Sample> {
    let process =
        Process::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default());
    if !process.alive {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let out = agent.cli(&["status"]);
    if !out.status.success() {
        eprintln!("soak: `portcullis status` failed: {}", stderr(&out).trim());
    }
    let status = AgentStatus::parse(&stdout(&out));
    Some(Sample {
        seconds,
        rss_kib: process.rss_kib?,
        fds,
        map_entries: status.map_total(),
        maps: status.maps.unwrap_or_default(),
        connections_active: status.connections_active,
    })
}

fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// UTC, from `date` (no time crate in this package).
fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_default_and_bounds() {
        assert_eq!(
            Options::parse(&[]),
            Ok(Options {
                minutes: 5.0,
                rate: 200
            })
        );
        assert_eq!(
            Options::parse(&args("--minutes 0.5 --rate 50")),
            Ok(Options {
                minutes: 0.5,
                rate: 50
            })
        );
        assert!(Options::parse(&args("--minutes 0")).is_err());
        assert!(Options::parse(&args("--minutes")).is_err());
        assert!(Options::parse(&args("--seconds 5")).is_err());
    }

    #[test]
    fn both_policies_allow_public_and_differ() {
        assert_ne!(POLICIES[0], POLICIES[1]);
        for p in POLICIES {
            assert!(p.contains("path: /public/**") && p.contains("/usr/bin/python3*"));
        }
    }
}
