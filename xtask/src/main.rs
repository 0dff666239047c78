//! Developer tasks: `cargo xtask build-ebpf | build | run | test | fuzz | bench | soak`.
//!
//! A fresh machine has stable and nightly Rust but neither nightly's
//! `rust-src` nor `bpf-linker`; `build-ebpf` installs what is missing and
//! says so.

mod adversarial;
mod bench;
mod ebpf;
mod fuzz;
mod soak;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  build-ebpf        build the BPF object (installs rust-src and bpf-linker if missing)
  build             build-ebpf, then the agent (release)
  run [ARGS...]     build, then start `portcullis agent ARGS...` on embedded defaults
  test              build, then run every test: unit and privileged end-to-end
  fuzz [OPTIONS]    run the cargo-fuzz targets in fuzz/ (--minutes N per target,
                    default 1; --target NAME); installs cargo-fuzz if missing
  bench [OPTIONS]   build, then measure every scenario against the direct path
                    (--only 1,4  --seconds N  --perf N); report in target/bench/
  soak [OPTIONS]    build, then run mixed traffic, reloads and proposals for
                    --minutes N (default 5); RSS, fds and map entries must stay flat
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "build-ebpf" => ebpf::build().map(|_| ()),
        "build" => build_all().map(|_| ()),
        "run" => {
            let agent = build_all()?;
            let status = Command::new(&agent)
                .arg("agent")
                .args(&rest)
                .status()
                .with_context(|| format!("starting {}", agent.display()))?;
            exit_with(status)
        }
        "test" => test(),
        "fuzz" => fuzz::run(&rest),
        "bench" => {
            let agent = build_all()?;
            bench::run(&agent, &rest)
        }
        "soak" => {
            let agent = build_all()?;
            soak::run(&agent, &rest)
        }
        "" | "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

fn exit_with(status: std::process::ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("command failed: {status}")
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the BPF object and the agent with it embedded; returns the binary.
fn build_all() -> Result<PathBuf> {
    let object = ebpf::build()?;
    let status = cargo()
        .args(["build", "--release", "-p", "portcullis-agent"])
        .env("PORTCULLIS_BPF_OBJECT", &object)
        .status()?;
    exit_with(status).context("building the agent")?;
    Ok(workspace_root().join("target/release/portcullis"))
}

fn test() -> Result<()> {
    let agent = build_all()?;
    let ci = env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    println!("xtask: running unit and end-to-end tests (CI={ci})");
    // Last run's adversarial records must not stand in for this run's.
    adversarial::clear_test_records(&adversarial::dir());
    // End-to-end tests share the kernel's cgroups and bpffs; each test uses
    // its own names, so they may run in parallel, but two threads keep a
    // two-core machine responsive.
    let mut child = cargo()
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--",
            "--test-threads=2",
        ])
        .env("PORTCULLIS_BPF_OBJECT", ebpf::object_path())
        .env("PORTCULLIS_BIN", &agent)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Pass the output through and total the per-binary results, so the run
    // ends with one line that counts every test.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("test output")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = test_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    for line in adversarial::lines(&adversarial::dir()) {
        println!("{line}");
    }
    println!("summary: {passed} passed, {failed} failed");
    exit_with(status)
}

/// `test result: ok. 12 passed; 1 failed; ...` -> (12, 1).
fn test_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                [.., n, w] if *w == word => n.parse().ok(),
                _ => None,
            }
        })
    };
    Some((number_before("passed")?, number_before("failed")?))
}

#[cfg(test)]
mod tests {
    use super::test_counts;

    #[test]
    fn totals_come_from_cargo_test_result_lines() {
        let line = "test result: ok. 259 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.28s";
        assert_eq!(test_counts(line), Some((259, 0)));
        let line = "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(test_counts(line), Some((3, 1)));
        assert_eq!(test_counts("running 3 tests"), None);
    }
}
