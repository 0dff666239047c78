//! `cargo xtask bench`: installs the load generators and the peer proxy
//! when missing, runs the policy-decision micro-benchmarks (criterion),
//! then the datapath driver (`tests/src/bin/bench`), which measures every
//! scenario against the direct path in one run and writes
//! `target/bench/latest.json`.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{cargo, exit_with, workspace_root};

/// Debian packages and the binary each provides.
const TOOLS: [(&str, &str); 3] = [
    ("wrk", "/usr/bin/wrk"),
    ("nghttp2-client", "/usr/bin/h2load"),
    ("squid", "/usr/sbin/squid"),
];

pub fn run(agent: &Path, args: &[String]) -> Result<()> {
    install_tools();
    let criterion = workspace_root().join("target/criterion");
    // Short windows: the decision is sub-microsecond, so 3 s of samples
    // per benchmark is plenty and keeps the whole bench under 10 minutes.
    let status = cargo()
        .args(["bench", "-p", "portcullis-agent", "--bench", "policy", "--"])
        .args(["--warm-up-time", "1", "--measurement-time", "3", "--noplot"])
        .status()?;
    exit_with(status).context("policy decision benchmark")?;
    let status = cargo()
        .args(["build", "--release", "-p", "portcullis-e2e", "--bins"])
        .status()?;
    exit_with(status).context("building the bench driver")?;
    let status = Command::new(workspace_root().join("target/release/bench"))
        .args(args)
        .env("PORTCULLIS_BIN", agent)
        .env("PORTCULLIS_CRITERION_DIR", &criterion)
        .env(
            "PORTCULLIS_BENCH_OUT",
            workspace_root().join("target/bench"),
        )
        .status()
        .context("starting the bench driver")?;
    exit_with(status).context("datapath benchmark")
}

/// Installs what is missing from the distribution's packages. A failure
/// is not fatal: the driver reports the scenarios it could not run.
fn install_tools() {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(_, binary)| !Path::new(binary).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    println!(
        "xtask: installing {} from the distribution's packages",
        missing.join(", ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet.
    let installed = install()
        || (Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && install());
    if !installed {
        eprintln!(
            "xtask: could not install {}; the scenarios that need them are reported as not measured",
            missing.join(", ")
        );
    }
    // The squid package starts a system service where it can; the bench
    // runs its own instance and must not measure against a stray one.
    let _ = Command::new("sh")
        .args([
            "-c",
            "command -v systemctl >/dev/null && systemctl stop squid 2>/dev/null; true",
        ])
        .status();
}
