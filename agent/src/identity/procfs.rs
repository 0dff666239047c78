//! What `/proc` says about a process, behind a trait so the identity rules
//! are tested without real processes.

use std::{
    fs,
    path::{Path, PathBuf},
};

pub trait ProcSource {
    /// Start time on the boot clock, in ns.
    fn start_boot_ns(&self, pid: u32) -> Option<u64>;
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    fn cmd_line(&self, pid: u32) -> Option<String>;
    /// The parent pid, if it is inside the sandbox cgroup (relative to the
    /// cgroup2 mount) or below it.
    fn parent_in_sandbox(&self, pid: u32, sandbox_cgroup: &Path) -> Option<u32>;
}

/// The real `/proc`.
pub struct ProcFs {
    ticks_per_second: u64,
}

impl Default for ProcFs {
    fn default() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            ticks_per_second: if ticks > 0 { ticks as u64 } else { 100 },
        }
    }
}

impl ProcSource for ProcFs {
    fn start_boot_ns(&self, pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ticks = stat_field(&stat, 22)?;
        Some(ticks.saturating_mul(1_000_000_000) / self.ticks_per_second)
    }

    fn exe(&self, pid: u32) -> Option<PathBuf> {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        Some(strip_deleted(exe))
    }

    fn cmd_line(&self, pid: u32) -> Option<String> {
        let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(cmd_line_from(&raw))
    }

    fn parent_in_sandbox(&self, pid: u32, sandbox_cgroup: &Path) -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = stat_field(&stat, 4)? as u32;
        let parent = crate::sandbox::cgroup::process_cgroup(ppid)?;
        parent.starts_with(sandbox_cgroup).then_some(ppid)
    }
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/<pid>/stat` line. The
/// command name in field 2 may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// A replaced binary reads as `/usr/bin/x (deleted)`; the path is still
/// the one the process was started from.
pub fn strip_deleted(path: PathBuf) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    }
}

/// NUL-separated argv as one line, capped so a huge argv cannot bloat logs.
pub fn cmd_line_from(raw: &[u8]) -> String {
    const MAX: usize = 1024;
    let text: String = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &text[..cut])
    } else {
        text
    }
}
