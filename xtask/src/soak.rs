//! `cargo xtask soak --minutes N`: builds the soak driver
//! (`tests/src/bin/soak`) and runs it against the release agent. The driver
//! runs mixed allowed and denied traffic, reloads and proposals for N
//! minutes, prints the agent's RSS, descriptors and map entries with their
//! slopes, and writes `target/adversarial/soak.json` for the adversarial
//! report, printed last. A growing resource or an unsound run fails the
//! task.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{adversarial, cargo, exit_with, workspace_root};

pub fn run(agent: &Path, args: &[String]) -> Result<()> {
    let status = cargo()
        .args(["build", "--release", "-p", "portcullis-e2e", "--bins"])
        .status()?;
    exit_with(status).context("building the soak driver")?;
    let status = Command::new(workspace_root().join("target/release/soak"))
        .args(args)
        .env("PORTCULLIS_BIN", agent)
        .env("PORTCULLIS_SOAK_OUT", adversarial::dir())
        .status()
        .context("starting the soak driver")?;
    for line in adversarial::lines(&adversarial::dir()) {
        println!("{line}");
    }
    exit_with(status).context("soak")
}
