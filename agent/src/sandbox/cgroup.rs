//! cgroup v2: finding the mount, making and removing sandbox directories.

use std::{
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The cgroup2 mount point in a `/proc/self/mounts` text. On hybrid hosts
/// cgroup2 sits beside the v1 hierarchies (for example at
/// `/sys/fs/cgroup/unified`), so it is never assumed.
pub fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(value) = raw
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup2 mount, or an error that says how to get one.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    find_cgroup2_mount(&mounts).context(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mounts). Portcullis needs \
         cgroup v2: mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot \
         with systemd.unified_cgroup_hierarchy=1",
    )
}

/// The cgroup id the kernel reports for a cgroup v2 directory: its inode.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    Ok(fs::metadata(dir)
        .with_context(|| format!("cgroup {} does not exist", dir.display()))?
        .ino())
}

/// The cgroup v2 path of a process relative to the mount (`0::/a/b`).
pub fn process_cgroup(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

pub fn parse_proc_cgroup(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// Creates `dir` (and parents); an existing directory is fine.
pub fn create(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))
}

/// Pids directly in `dir`.
pub fn processes(dir: &Path) -> Result<Vec<u32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kills every process in `dir` and below, then removes the directories
/// bottom-up. Returns how many processes were signalled.
pub fn kill_and_remove(dir: &Path) -> Result<u32> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut killed = 0;
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs)?;
    for d in &dirs {
        killed += processes(d).map(|p| p.len() as u32).unwrap_or(0);
    }
    // cgroup.kill (5.14+) kills the whole subtree atomically, forks included.
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        fs::OpenOptions::new()
            .write(true)
            .open(&kill)
            .and_then(|mut f| f.write_all(b"1"))
            .with_context(|| format!("writing {}", kill.display()))?;
    } else {
        for d in &dirs {
            for pid in processes(d).unwrap_or_default() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Dying tasks leave the cgroup asynchronously; rmdir fails with EBUSY
    // until they are gone, so wait on the populated flag.
    for d in dirs.iter().rev() {
        wait_unpopulated(d)?;
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", d.display())),
        }
    }
    Ok(killed)
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn wait_unpopulated(dir: &Path) -> Result<()> {
    let events = dir.join("cgroup.events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&events).unwrap_or_default();
        if text.is_empty() || text.lines().any(|l| l.trim() == "populated 0") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("processes in {} did not exit within 10 s", dir.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            find_cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        let line = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            find_cgroup2_mount(line),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn parses_the_unified_line_of_proc_cgroup() {
        let text = "12:cpu:/\n0::/portcullis/demo\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some(PathBuf::from("portcullis/demo"))
        );
        assert_eq!(parse_proc_cgroup("3:cpu:/x\n"), None);
    }
}
