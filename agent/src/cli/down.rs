//! `portcullis down`: stop the agent, then remove every trace of it from
//! the kernel and the cgroup tree. Works with the agent already dead.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};

use crate::{
    config::AgentConfig,
    daemon::require_root,
    datapath::{self, PinLayout},
    sandbox::cgroup,
    store::{ChangeSet, SqliteStore, Store, legacy},
};

pub async fn run(config: &AgentConfig) -> Result<ExitCode> {
    require_root("`portcullis down`")?;
    stop_agent(config)?;
    let pins = PinLayout::new(&config.bpffs_dir);
    let cgroup_root = cgroup::cgroup2_root()?;
    let mut removed = 0;
    // Nothing was ever stored: no sandboxes to remove.
    let rows = if config.state_dir.exists() {
        let store = SqliteStore::open(&config.state_dir).await?;
        // State of an older version still counts: it names pins and cgroups.
        legacy::import_legacy(&store, &config.state_dir).await?;
        Some((store.sandboxes().await?, store))
    } else {
        None
    };
    for (row, store) in rows
        .iter()
        .flat_map(|(rows, store)| rows.iter().map(move |r| (r, store)))
    {
        let record = &row.record;
        // Owned sandboxes: kill first, so nothing runs uncaptured.
        if !record.adopted {
            cgroup::kill_and_remove(&record.cgroup_path)
                .with_context(|| format!("removing sandbox {}", record.name))?;
        }
        datapath::detach_sandbox(&pins, record.name.as_str())?;
        let mut change = ChangeSet::for_sandbox(record.name.as_str());
        change.delete_sandbox = true;
        store.commit(change).await?;
        removed += 1;
    }
    pins.remove_all()?;
    let parent = cgroup_root.join(&config.cgroup_parent);
    cgroup::kill_and_remove(&parent)?;
    let _ = std::fs::remove_dir_all(&config.run_dir);
    println!(
        "portcullis is down: {removed} sandboxes removed with their policies and drafts, programs detached, pins removed"
    );
    println!(
        "kept: {} (CA) and {} (audit logs)",
        config.ca_dir().display(),
        config.log_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn stop_agent(config: &AgentConfig) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(config.pid_file()) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return Ok(()); // Not running.
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Running, and not a zombie waiting for its parent to reap it.
fn alive(pid: nix::unistd::Pid) -> bool {
    if nix::sys::signal::kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}
