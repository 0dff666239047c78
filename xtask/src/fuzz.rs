//! `cargo xtask fuzz [--minutes N] [--target NAME]`: runs the cargo-fuzz
//! targets in `fuzz/` (every `fuzz/fuzz_targets/*.rs`, or just NAME) for N
//! minutes each (default 1; fractions allowed), then prints one summary
//! line per target and a total.
//!
//! Needs nightly (libFuzzer builds use `-Z sanitizer`); installs
//! `cargo-fuzz` if missing and says so. Each target starts from the seeds
//! in `fuzz/corpus/<target>/` and the corpus of earlier campaigns in
//! `target/fuzz-corpus/<target>/`, where libFuzzer keeps what it finds.
//! A target that crashes (panics, trips a sanitizer, times out, runs out
//! of memory) leaves its input in
//! `fuzz/artifacts/<target>/`; reproduce one with
//! `cargo +nightly fuzz run --fuzz-dir fuzz <target> <file>`. The task fails
//! if any target crashed; the remaining targets still run first. The totals
//! go to `target/adversarial/fuzz.json` for the adversarial report.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

const TOOLCHAIN: &str = "nightly";
const RSS_LIMIT_MB: u32 = 4096;

const USAGE: &str = "\
usage: cargo xtask fuzz [--minutes N] [--target NAME]

  --minutes N     fuzz each target for N minutes (default 1; may be a fraction)
  --target NAME   only this target (a file name in fuzz/fuzz_targets/, without .rs)
";

pub fn run(args: &[String]) -> Result<()> {
    let Some(opts) = parse_args(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let root = crate::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen = match &opts.target {
        Some(name) if all.contains(name) => vec![name.clone()],
        Some(name) => bail!("no fuzz target `{name}`; targets: {}", all.join(", ")),
        None => all,
    };
    crate::ebpf::ensure_nightly("fuzzing needs `-Z sanitizer`")?;
    ensure_cargo_fuzz()?;

    let mut results = Vec::new();
    for target in &chosen {
        println!("xtask: fuzzing {target} for {} s", opts.seconds);
        results.push((
            target.clone(),
            fuzz_one(&root, &fuzz_dir, target, opts.seconds)?,
        ));
    }

    let (mut execs, mut crashes, mut failed) = (0u64, 0u64, Vec::new());
    for (target, stats) in &results {
        if !stats.started {
            println!("fuzz: {target}: did not start (build or setup failed; see above)");
            failed.push(target.as_str());
            continue;
        }
        println!(
            "fuzz: {target}: {} executions in {} s, crashes: {}",
            stats.executions,
            stats.seconds.unwrap_or_default(),
            stats.crashes()
        );
        for artifact in &stats.artifacts {
            println!("fuzz: {target}:   input: {artifact}");
        }
        execs += stats.executions;
        crashes += stats.crashes();
    }
    println!("fuzz: total {execs} executions, {crashes} crashes");
    record(&results, execs, crashes)?;
    for line in crate::adversarial::lines(&crate::adversarial::dir()) {
        println!("{line}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets did not run: {}", failed.join(", "));
    }
    if crashes > 0 {
        bail!(
            "{crashes} crash(es); the inputs are in {}",
            fuzz_dir.join("artifacts").display()
        );
    }
    Ok(())
}

/// `target/adversarial/fuzz.json`, for the adversarial report.
fn record(results: &[(String, Stats)], executions: u64, crashes: u64) -> Result<()> {
    let finished = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let targets: Vec<serde_json::Value> = results
        .iter()
        .map(|(name, stats)| {
            serde_json::json!({
                "target": name,
                "started": stats.started,
                "executions": stats.executions,
                "seconds": stats.seconds,
                "crashes": stats.crashes(),
                "artifacts": stats.artifacts,
            })
        })
        .collect();
    let report = serde_json::json!({
        "finished": finished,
        "executions": executions,
        "crashes": crashes,
        "targets": targets,
    });
    let dir = crate::adversarial::dir();
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("fuzz.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Options {
    seconds: u64,
    target: Option<String>,
}

/// `None` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let mut minutes = 1.0f64;
    let mut target = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "--minutes" => {
                let v = value()?;
                minutes = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .with_context(|| format!("--minutes: `{v}` is not a positive number"))?;
            }
            "--target" => target = Some(value()?),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    Ok(Some(Options { seconds, target }))
}

/// Target names: the `.rs` files in `fuzz/fuzz_targets/`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

fn cargo_fuzz_works() -> bool {
    nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_works() {
        return Ok(());
    }
    println!(
        "xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked); this takes a minute"
    );
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status})");
    }
    if !cargo_fuzz_works() {
        bail!("cargo-fuzz was installed but `cargo +nightly fuzz --version` fails");
    }
    Ok(())
}

/// Nightly's cargo, without what the outer (stable) cargo put in the
/// environment.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo"])
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    cmd
}

/// Builds and runs one target, passing libFuzzer's output through (it
/// writes to stderr) while reading its statistics.
fn fuzz_one(root: &Path, fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Stats> {
    let started = Instant::now();
    let scratch = root.join("target/fuzz-corpus").join(target);
    fs::create_dir_all(&scratch).context("scratch corpus")?;
    let mut child = nightly_cargo()
        .args(["fuzz", "run", target, "--fuzz-dir"])
        .arg(fuzz_dir)
        // New inputs go to the first corpus directory: a scratch one under
        // target/, so the tracked seeds stay as they are.
        .arg(&scratch)
        .arg(fuzz_dir.join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .current_dir(root)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo fuzz")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let mut stats = Stats::default();
    let mut fuzzing_since = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        stats.feed(&line);
        if stats.started && fuzzing_since.is_none() {
            fuzzing_since = Some(Instant::now());
        }
    }
    let status = child.wait()?;
    if stats.seconds.is_none() {
        // No `Done` line (a crash ends the run early): time it ourselves.
        stats.seconds = Some(fuzzing_since.unwrap_or(started).elapsed().as_secs());
    }
    stats.failed = !status.success();
    Ok(stats)
}

/// What one libFuzzer run reported.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    /// libFuzzer printed its banner: the build worked and fuzzing began.
    started: bool,
    executions: u64,
    seconds: Option<u64>,
    /// Inputs written for crashes, leaks, timeouts and out-of-memory.
    artifacts: Vec<String>,
    /// The process exited unsuccessfully.
    failed: bool,
}

impl Stats {
    /// Reads one line of libFuzzer output.
    fn feed(&mut self, line: &str) {
        let line = line.trim_end();
        if line.starts_with("INFO: Seed:") || line.starts_with("INFO: Running with") {
            self.started = true;
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 123456 runs in 20 second(s)`
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words.as_slice() {
                if let Ok(runs) = runs.parse() {
                    self.executions = runs;
                }
                self.seconds = secs.parse().ok();
            }
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            if let Ok(n) = n.trim().parse::<u64>() {
                self.executions = self.executions.max(n);
            }
        } else if let Some(rest) = line.strip_prefix('#') {
            // Progress: `#4096\tpulse  cov: ...`, `#123\tDONE   cov: ...`.
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>() {
                self.executions = self.executions.max(n);
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            let path = path.trim();
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let is_failure = ["crash-", "leak-", "timeout-", "oom-"]
                .iter()
                .any(|p| name.starts_with(p));
            if is_failure && !self.artifacts.iter().any(|a| a == path) {
                self.artifacts.push(path.to_string());
            }
        }
    }

    /// Crash inputs written; a failed run that wrote none still counts one.
    fn crashes(&self) -> u64 {
        let written = self.artifacts.len() as u64;
        if written == 0 && self.failed && self.started {
            1
        } else {
            written
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> Stats {
        let mut stats = Stats::default();
        for line in text.lines() {
            stats.feed(line);
        }
        stats
    }

    #[test]
    fn a_clean_run_reports_its_done_line() {
        let stats = feed(
            "INFO: Running with entropic power schedule (0xFF, 100).\n\
             INFO: Seed: 1234567\n\
             #2\tINITED cov: 120 ft: 130 corp: 7/1042b exec/s: 0 rss: 40Mb\n\
             #65536\tpulse  cov: 900 ft: 2000 corp: 300/20Kb lim: 4096 exec/s: 3276 rss: 60Mb\n\
             #70210\tDONE   cov: 910 ft: 2010 corp: 301/20Kb lim: 4096 exec/s: 3343 rss: 61Mb\n\
             stat::number_of_executed_units: 70210\n\
             stat::average_exec_per_sec:     3343\n\
             Done 70210 runs in 21 second(s)\n",
        );
        assert!(stats.started);
        assert_eq!(stats.executions, 70210);
        assert_eq!(stats.seconds, Some(21));
        assert_eq!(stats.crashes(), 0);
    }

    #[test]
    fn a_crash_counts_its_artifact_and_the_executions_so_far() {
        let mut stats = feed(
            "INFO: Seed: 42\n\
             #1024\tpulse  cov: 50 ft: 60 corp: 3/10b exec/s: 512 rss: 30Mb\n\
             thread '<unnamed>' panicked at agent/src/dns/wire.rs:10:5:\n\
             ==12345== ERROR: libFuzzer: deadly signal\n\
             MS: 1 ChangeBit-; base unit: 0000\n\
             artifact_prefix='/w/fuzz/artifacts/dns_message/'; Test unit written to /w/fuzz/artifacts/dns_message/crash-da39a3ee\n\
             stat::number_of_executed_units: 1500\n",
        );
        stats.failed = true;
        assert_eq!(stats.executions, 1500);
        assert_eq!(stats.seconds, None);
        assert_eq!(
            stats.artifacts,
            ["/w/fuzz/artifacts/dns_message/crash-da39a3ee"]
        );
        assert_eq!(stats.crashes(), 1);
    }

    #[test]
    fn slow_units_are_not_crashes_and_failed_builds_are_not_runs() {
        let stats = feed(
            "INFO: Seed: 1\n\
             artifact_prefix='a/'; Test unit written to a/slow-unit-abc\n\
             Done 10 runs in 1 second(s)\n",
        );
        assert_eq!(stats.crashes(), 0);
        let mut build_failed = feed("error[E0425]: cannot find value `x` in this scope\n");
        build_failed.failed = true;
        assert!(!build_failed.started);
        assert_eq!(build_failed.crashes(), 0);
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            args(&[]).unwrap(),
            Some(Options {
                seconds: 60,
                target: None
            })
        );
        assert_eq!(
            args(&["--minutes", "0.5", "--target=dns_message"]).unwrap(),
            Some(Options {
                seconds: 30,
                target: Some("dns_message".into())
            })
        );
        assert_eq!(args(&["--help"]).unwrap(), None);
        assert!(args(&["--minutes", "0"]).is_err());
        assert!(args(&["--minutes"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
