use std::{collections::HashMap, path::PathBuf};

use portcullis_common::{COMM_LEN, FILENAME_LEN, PROCESS_EXEC, PROCESS_FORK, ProcessEvent};

use super::{IdentityError, ProcessTable, procfs::*};

#[derive(Default)]
struct FakeProc {
    start: HashMap<u32, u64>,
    exe: HashMap<u32, PathBuf>,
    parent: HashMap<u32, u32>,
}

impl ProcSource for FakeProc {
    fn start_boot_ns(&self, pid: u32) -> Option<u64> {
        self.start.get(&pid).copied()
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        self.exe.get(&pid).cloned()
    }
    fn cmd_line(&self, _pid: u32) -> Option<String> {
        None
    }
    fn parent_in_sandbox(&self, pid: u32, _sandbox: &std::path::Path) -> Option<u32> {
        self.parent.get(&pid).copied()
    }
}

fn event(kind: u32, tgid: u32, parent: u32, boot_ns: u64, filename: &str) -> ProcessEvent {
    let mut name = [0u8; FILENAME_LEN];
    name[..filename.len()].copy_from_slice(filename.as_bytes());
    ProcessEvent {
        kind,
        tgid,
        parent_tgid: parent,
        _pad: 0,
        cgroup_id: 7,
        boot_ns,
        comm: [0; COMM_LEN],
        filename: name,
    }
}

#[test]
fn a_short_lived_process_is_attributed_from_its_exec_event() {
    let mut table = ProcessTable::new(100);
    table.apply(&event(PROCESS_FORK, 20, 10, 100, ""), None);
    table.apply(&event(PROCESS_EXEC, 20, 0, 110, "/usr/bin/curl"), None);
    // The process is gone from /proc: the cache alone answers.
    let id = table.resolve(20, 200, None, &FakeProc::default()).unwrap();
    assert_eq!(id.process.exe, PathBuf::from("/usr/bin/curl"));
}

#[test]
fn the_image_at_connect_time_wins_over_a_later_exec() {
    let mut table = ProcessTable::new(100);
    table.apply(
        &event(PROCESS_EXEC, 20, 0, 100, "/bin/sh"),
        Some("/usr/bin/dash".into()),
    );
    table.apply(&event(PROCESS_EXEC, 20, 0, 300, "/usr/bin/curl"), None);
    let id = table.resolve(20, 200, None, &FakeProc::default()).unwrap();
    assert_eq!(id.process.exe, PathBuf::from("/usr/bin/dash"));
    assert_eq!(id.process.script, Some(PathBuf::from("/bin/sh")));
    let id = table.resolve(20, 400, None, &FakeProc::default()).unwrap();
    assert_eq!(id.process.exe, PathBuf::from("/usr/bin/curl"));
}

#[test]
fn ancestors_come_from_fork_events() {
    let mut table = ProcessTable::new(100);
    table.apply(&event(PROCESS_EXEC, 10, 0, 50, "/usr/bin/bash"), None);
    table.apply(&event(PROCESS_FORK, 20, 10, 100, ""), None);
    table.apply(&event(PROCESS_EXEC, 20, 0, 110, "/usr/bin/python3"), None);
    let id = table.resolve(20, 200, None, &FakeProc::default()).unwrap();
    let paths: Vec<_> = id.binary_paths().map(|p| p.to_path_buf()).collect();
    assert_eq!(
        paths,
        vec![
            PathBuf::from("/usr/bin/python3"),
            PathBuf::from("/usr/bin/bash")
        ]
    );
}

#[test]
fn a_forked_child_runs_its_parents_image_until_exec() {
    let mut table = ProcessTable::new(100);
    table.apply(&event(PROCESS_EXEC, 10, 0, 50, "/usr/bin/node"), None);
    table.apply(&event(PROCESS_FORK, 20, 10, 100, ""), None);
    let id = table.resolve(20, 150, None, &FakeProc::default()).unwrap();
    assert_eq!(id.process.exe, PathBuf::from("/usr/bin/node"));
}

#[test]
fn procfs_is_used_when_the_cache_misses_but_a_reused_pid_is_refused() {
    let table = ProcessTable::new(100);
    let mut proc = FakeProc::default();
    proc.start.insert(30, 1_000);
    proc.exe.insert(30, "/usr/bin/wget".into());
    assert_eq!(
        table.resolve(30, 5_000, None, &proc).unwrap().process.exe,
        PathBuf::from("/usr/bin/wget")
    );
    proc.start.insert(30, 9_000_000_000);
    assert_eq!(
        table.resolve(30, 5_000, None, &proc),
        Err(IdentityError::PidReused(30))
    );
    assert_eq!(
        table.resolve(31, 5_000, None, &proc),
        Err(IdentityError::Unknown(31))
    );
}

#[test]
fn the_cache_is_bounded() {
    let mut table = ProcessTable::new(8);
    for pid in 0..100 {
        table.apply(
            &event(PROCESS_EXEC, pid, 0, u64::from(pid), "/bin/true"),
            None,
        );
    }
    assert!(table.len() <= 8);
}

#[test]
fn stat_fields_survive_odd_command_names() {
    let stat = "1234 (we ird) name)) S 99 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5555 0";
    assert_eq!(stat_field(stat, 4), Some(99));
    assert_eq!(stat_field(stat, 22), Some(5555));
}

#[test]
fn deleted_binaries_keep_their_path_and_argv_is_capped() {
    assert_eq!(
        strip_deleted("/usr/bin/x (deleted)".into()),
        PathBuf::from("/usr/bin/x")
    );
    assert_eq!(cmd_line_from(b"curl\0-s\0http://x/\0"), "curl -s http://x/");
    assert!(cmd_line_from(&vec![b'a'; 5000]).len() < 1100);
}
