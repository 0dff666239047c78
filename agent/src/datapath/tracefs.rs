//! tracefs: mounted if missing (aya attaches tracepoints through it), and
//! read for the layout of `sched_process_fork`, which changed in 6.x.

use std::{fs, path::Path};

use anyhow::{Context, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted at /sys/kernel/tracing.
pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting tracefs at {TRACEFS} (needed for the exec tracepoints)"))
}

/// Byte offset of `child_pid` in the `sched_process_fork` record.
pub fn fork_child_pid_offset() -> Result<u32> {
    let candidates = [
        format!("{TRACEFS}/events/sched/sched_process_fork/format"),
        "/sys/kernel/debug/tracing/events/sched/sched_process_fork/format".to_string(),
    ];
    let text = candidates
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .context("reading the sched_process_fork format from tracefs")?;
    field_offset(&text, "child_pid").context("sched_process_fork has no child_pid field")
}

/// The offset of `field` in a tracefs `format` text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (declaration, rest) = decl.split_once(';')?;
        let name = declaration
            .split_whitespace()
            .last()?
            .trim_end_matches("[]");
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    #[test]
    fn reads_offsets_of_old_and_new_fork_layouts() {
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(old, "child_pid"), Some(44));
        assert_eq!(field_offset(old, "nope"), None);
    }
}
