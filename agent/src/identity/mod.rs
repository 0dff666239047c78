//! Which binary opened a connection, and its ancestors.
//!
//! Sources, in order of trust:
//! 1. the exec cache, fed by the `sched_process_exec`/`sched_process_fork`
//!    tracepoints of sandbox cgroups: it knows short-lived processes and
//!    which image a pid ran at the moment of the connect;
//! 2. `/proc/<tgid>/exe`, accepted only if the process started before the
//!    connect (a later start means the pid was reused).
//!
//! Anything else is an error, which the proxy turns into a deny.

pub mod procfs;

use std::{collections::HashMap, path::PathBuf};

use portcullis_common::{FILENAME_LEN, PROCESS_EXEC, PROCESS_FORK, ProcessEvent};

/// One process's image at the time of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub exe: PathBuf,
    /// The script an interpreter was started on, when exec named another file.
    pub script: Option<PathBuf>,
}

/// The binary behind a connection and its ancestry, nearest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub process: Process,
    pub ancestors: Vec<Process>,
    pub cmd_line: Option<String>,
}

impl Identity {
    /// The exe paths a binary rule may match: the process, then ancestors.
    pub fn binary_paths(&self) -> impl Iterator<Item = &std::path::Path> {
        std::iter::once(self.process.exe.as_path())
            .chain(self.ancestors.iter().map(|p| p.exe.as_path()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("process {0} is gone and no exec event recorded its image")]
    Unknown(u32),
    #[error("pid {0} was reused after the connect; the original process is unknown")]
    PidReused(u32),
}

#[derive(Clone, Debug)]
struct Exec {
    boot_ns: u64,
    exe: PathBuf,
    script: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    /// Parent and when the fork happened.
    parent: Option<(u32, u64)>,
    /// Images in exec order.
    execs: Vec<Exec>,
    last_seen_ns: u64,
}

/// Bounded cache of sandbox processes, fed by kernel events.
pub struct ProcessTable {
    entries: HashMap<u32, Entry>,
    capacity: usize,
}

/// How far back a process's start may appear after the connect: /proc
/// start times have clock-tick (10 ms) resolution.
const START_TIME_SLACK_NS: u64 = 20_000_000;
const MAX_ANCESTORS: usize = 32;
const MAX_EXECS_PER_PROCESS: usize = 8;

impl ProcessTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one `PROCESS_EVENTS` record. `exe_now` is what
    /// `/proc/<tgid>/exe` says at the time of reading, if the process is
    /// still the one that exec'd; it beats the exec file name, which may be
    /// relative or a script.
    pub fn apply(&mut self, event: &ProcessEvent, exe_now: Option<PathBuf>) {
        self.evict_if_full();
        match event.kind {
            PROCESS_EXEC => {
                let filename = c_string(&event.filename);
                let named = (!filename.is_empty()).then(|| PathBuf::from(&filename));
                let (exe, script) = match (exe_now, named) {
                    (Some(exe), Some(named)) if named != exe && named.is_absolute() => {
                        (exe, Some(named))
                    }
                    (Some(exe), _) => (exe, None),
                    (None, Some(named)) => (named, None),
                    (None, None) => return,
                };
                let entry = self.entries.entry(event.tgid).or_default();
                if entry.execs.len() == MAX_EXECS_PER_PROCESS {
                    entry.execs.remove(0);
                }
                entry.execs.push(Exec {
                    boot_ns: event.boot_ns,
                    exe,
                    script,
                });
                entry.last_seen_ns = event.boot_ns;
            }
            PROCESS_FORK => {
                let parent_image = self.image_at(event.parent_tgid, event.boot_ns).cloned();
                let entry = self.entries.entry(event.tgid).or_default();
                // A fork replaces whatever a recycled pid meant before.
                entry.execs.clear();
                entry.parent = Some((event.parent_tgid, event.boot_ns));
                // Until it execs, the child runs its parent's image.
                if let Some(image) = parent_image {
                    entry.execs.push(Exec {
                        boot_ns: event.boot_ns,
                        ..image
                    });
                }
                entry.last_seen_ns = event.boot_ns;
            }
            _ => {}
        }
    }

    fn image_at(&self, pid: u32, at_ns: u64) -> Option<&Exec> {
        self.entries
            .get(&pid)?
            .execs
            .iter()
            .rev()
            .find(|e| e.boot_ns <= at_ns)
    }

    fn evict_if_full(&mut self) {
        if self.entries.len() < self.capacity {
            return;
        }
        // Drop the least recently seen quarter; amortised O(1) per insert.
        let mut seen: Vec<(u64, u32)> = self
            .entries
            .iter()
            .map(|(p, e)| (e.last_seen_ns, *p))
            .collect();
        seen.sort_unstable();
        for (_, pid) in seen.into_iter().take(self.capacity / 4 + 1) {
            self.entries.remove(&pid);
        }
    }

    /// Resolves the process that made a call at `at_ns` (boot clock).
    /// `sandbox_cgroup` (relative to the cgroup2 mount) bounds the ancestor
    /// walk through procfs: a parent outside the sandbox is not an ancestor
    /// a policy may match, or the host's shell would lend its identity.
    pub fn resolve(
        &self,
        tgid: u32,
        at_ns: u64,
        sandbox_cgroup: Option<&std::path::Path>,
        proc: &dyn procfs::ProcSource,
    ) -> Result<Identity, IdentityError> {
        let process = self.process_at(tgid, at_ns, proc)?;
        let mut ancestors = Vec::new();
        let mut pid = tgid;
        while ancestors.len() < MAX_ANCESTORS {
            let Some(parent) = self.parent_of(pid, sandbox_cgroup, proc) else {
                break;
            };
            if parent <= 1 {
                break;
            }
            match self.process_at(parent, at_ns, proc) {
                Ok(p) => ancestors.push(p),
                Err(_) => break,
            }
            pid = parent;
        }
        Ok(Identity {
            process,
            ancestors,
            cmd_line: proc.cmd_line(tgid),
        })
    }

    fn process_at(
        &self,
        pid: u32,
        at_ns: u64,
        proc: &dyn procfs::ProcSource,
    ) -> Result<Process, IdentityError> {
        if let Some(exec) = self.image_at(pid, at_ns) {
            return Ok(Process {
                pid,
                exe: exec.exe.clone(),
                script: exec.script.clone(),
            });
        }
        let start = proc.start_boot_ns(pid).ok_or(IdentityError::Unknown(pid))?;
        if start > at_ns.saturating_add(START_TIME_SLACK_NS) {
            return Err(IdentityError::PidReused(pid));
        }
        let exe = proc.exe(pid).ok_or(IdentityError::Unknown(pid))?;
        Ok(Process {
            pid,
            exe,
            script: None,
        })
    }

    /// Parents are only followed within the sandbox: the cache knows only
    /// sandbox processes, and procfs parents are checked by the source.
    fn parent_of(
        &self,
        pid: u32,
        sandbox_cgroup: Option<&std::path::Path>,
        proc: &dyn procfs::ProcSource,
    ) -> Option<u32> {
        if let Some((parent, _)) = self.entries.get(&pid).and_then(|e| e.parent) {
            return Some(parent);
        }
        proc.parent_in_sandbox(pid, sandbox_cgroup?)
    }
}

fn c_string(bytes: &[u8; FILENAME_LEN]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `comm` from the kernel, as text.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests;
