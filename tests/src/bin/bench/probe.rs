//! The agent's footprint, read from /proc: resident memory and CPU time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub rss_kib: u64,
    /// User plus system CPU seconds since the process started.
    pub cpu_seconds: f64,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    Usage {
        rss_kib: parse_rss_kib(&status).unwrap_or(0),
        cpu_seconds: parse_cpu_ticks(&stat).unwrap_or(0) as f64 / clock_ticks(),
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `VmRSS:     12345 kB` from /proc/PID/status.
fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat. The command name
/// may hold spaces and parentheses, so count from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Samples a process every 50 ms until stopped; reports the peak RSS and
/// the CPU time used while it watched.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
    start: Usage,
    started: Instant,
    pid: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl Watch {
    pub fn start(pid: u32) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(usage(pid).rss_kib);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        Watch {
            stop,
            thread,
            start: usage(pid),
            started: Instant::now(),
            pid,
        }
    }

    pub fn finish(self) -> Window {
        let end = usage(self.pid);
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.thread.join().unwrap_or(0).max(end.rss_kib);
        Window {
            peak_rss_kib: peak,
            cpu_seconds: end.cpu_seconds - self.start.cpu_seconds,
            wall_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_from_status() {
        let status =
            "Name:\tportcullis\nVmPeak:\t  90000 kB\nVmRSS:\t   23456 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_rss_kib(status), Some(23456));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn cpu_ticks_from_stat_with_an_awkward_name() {
        let stat =
            "4242 (tokio) (worker)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn this_process_has_a_footprint() {
        let me = usage(std::process::id());
        assert!(me.rss_kib > 0);
    }
}
