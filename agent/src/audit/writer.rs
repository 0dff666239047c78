//! The audit log writer: a bounded queue in front of a blocking writer
//! thread that appends JSON and shorthand lines to daily files.
//!
//! Each shorthand line of an event about a sandbox (`unmapped.sandbox`) is
//! also appended to that sandbox's own daily file under
//! `<dir>/sandboxes/<sandbox>/`, so `GET /v1/denials` can show a sandbox
//! its own lines and nothing else.
//!
//! Logging must never slow or stall the data path, so `AuditLog::log` only
//! `try_send`s; when the queue is full the event is counted and dropped.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use time::{Date, Month, OffsetDateTime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::event::AuditEvent;
use super::shorthand::{shorthand_line, utc_datetime};

/// File name prefix of the OCSF JSON-lines log.
pub const OCSF_PREFIX: &str = "ocsf";
/// File name prefix of the shorthand log (read by `GET /v1/denials`).
pub const SHORTHAND_PREFIX: &str = "portcullis";

/// Mode of log files: readable by the log group, never by sandboxed users.
const FILE_MODE: u32 = 0o640;
/// Mode of a log directory we create.
const DIR_MODE: u32 = 0o750;
/// Most queued items handled between two flushes, so a flood cannot delay
/// visibility indefinitely.
const MAX_BATCH: usize = 4096;
/// After a batch, the writer lets events gather this long before it looks
/// again. Waking the writer thread for every event cost the proxy about a
/// third of its request rate under load (`cargo xtask bench`, scenario 2);
/// a 2 ms pause bounds the wakeups to 500 a second and delays no decision.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// Buffer of each open log file: a batch becomes a few large writes.
const FILE_BUFFER: usize = 64 * 1024;
/// Directory under the log directory that holds one directory per sandbox.
pub const SANDBOXES_DIR: &str = "sandboxes";
/// Most per-sandbox files kept open at once; the least recently written is
/// closed first. Bounds descriptors however many sandboxes come and go.
const MAX_OPEN_SANDBOX_FILES: usize = 64;

/// `<log_dir>/sandboxes/<sandbox>`: where the writer keeps a sandbox's own
/// `portcullis.YYYY-MM-DD.log` files and `GET /v1/denials` reads them.
/// `sandbox` must be a validated name (see [`is_safe_sandbox_dir_name`]).
pub fn sandbox_log_dir(log_dir: &Path, sandbox: &str) -> PathBuf {
    log_dir.join(SANDBOXES_DIR).join(sandbox)
}

/// Whether `name` can be used as one path component under `sandboxes/`
/// without escaping it. Names are validated long before they reach the
/// log; this is the last line of defence, not the validation.
pub fn is_safe_sandbox_dir_name(name: &str) -> bool {
    !name.is_empty() && name != "." && !name.contains("..") && !name.contains(['/', '\\', '\0'])
}

/// Where and how the audit log is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// Directory holding the daily files, e.g. `/var/log/portcullis`.
    pub dir: PathBuf,
    /// Daily files kept per kind, including today's (0 is treated as 1).
    pub keep_days: usize,
    /// Events that may wait for the writer before new ones are dropped.
    pub queue: usize,
}

/// Why `AuditLog::flush` could not confirm the events are on disk.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuditError {
    #[error("audit writer has stopped")]
    Closed,
    #[error("audit log write failed: {0}")]
    Write(String),
}

enum Command {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

/// Handle to the audit log; cheap to clone, safe to use from any thread.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    dropped: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer. Must be called inside a Tokio runtime. The writer
    /// finishes (and the handle resolves) once every `AuditLog` clone is
    /// dropped and the queue is drained.
    pub fn start(config: AuditConfig) -> (AuditLog, JoinHandle<()>) {
        let (log, rx) = Self::channel(config.queue);
        let writer = Writer::new(config, log.lost.clone());
        let handle = tokio::task::spawn_blocking(move || run(rx, writer));
        (log, handle)
    }

    fn channel(queue: usize) -> (AuditLog, mpsc::Receiver<Command>) {
        // A zero-capacity tokio channel panics; one slot is the minimum.
        let (tx, rx) = mpsc::channel(queue.max(1));
        let log = AuditLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            lost: Arc::new(AtomicU64::new(0)),
        };
        (log, rx)
    }

    /// Queues an event. Never blocks; if the queue is full (or the writer
    /// is gone) the event is dropped and counted.
    pub fn log(&self, event: AuditEvent) {
        if self.tx.try_send(Command::Event(Box::new(event))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far because the queue was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events that reached the writer but not the disk (disk full, I/O
    /// error): what was buffered when a write or flush failed.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Waits until every event queued before this call is written and
    /// flushed. Reports a write failure seen since the previous flush.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(done_tx))
            .await
            .map_err(|_| AuditError::Closed)?;
        done_rx.await.map_err(|_| AuditError::Closed)?
    }
}

/// Writer loop: take what is queued, write it, flush, answer flushers.
fn run(mut rx: mpsc::Receiver<Command>, mut writer: Writer) {
    while let Some(first) = rx.blocking_recv() {
        let mut waiters = Vec::new();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(command) = next.take() {
            match command {
                Command::Event(event) => writer.write(&event),
                Command::Flush(done) => waiters.push(done),
            }
            handled += 1;
            if handled < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        writer.flush();
        if !waiters.is_empty() {
            let result = writer
                .take_error()
                .map_or(Ok(()), |e| Err(AuditError::Write(e)));
            for done in waiters {
                // The flusher may have given up waiting; nothing to do.
                let _ = done.send(result.clone());
            }
        } else if handled > 1 {
            // Under load: let the next batch gather. A lone event (an idle
            // agent) is not delayed; a flusher is answered at once.
            std::thread::sleep(LINGER);
        }
    }
    writer.flush();
}

struct DayFiles {
    date: Date,
    ocsf: BufWriter<File>,
    shorthand: BufWriter<File>,
}

/// One sandbox's open shorthand file.
struct SandboxFile {
    date: Date,
    file: BufWriter<File>,
    /// Value of `Writer::writes` at the last write, for closing the least
    /// recently written file first.
    last_write: u64,
}

struct Writer {
    config: AuditConfig,
    current: Option<DayFiles>,
    /// Open per-sandbox shorthand files, by sandbox name.
    sandboxes: HashMap<String, SandboxFile>,
    /// Events written so far; orders `SandboxFile::last_write`.
    writes: u64,
    /// First write error since the last flush marker.
    error: Option<String>,
    /// Whether the last attempt failed; limits error logging to one line
    /// per outage.
    failing: bool,
    /// Scratch buffer for one event's JSON line.
    json: Vec<u8>,
    /// Events in the OCSF buffer, not yet confirmed on disk.
    unflushed: u64,
    /// Shared with `AuditLog::lost`.
    lost: Arc<AtomicU64>,
}

impl Writer {
    fn new(config: AuditConfig, lost: Arc<AtomicU64>) -> Self {
        Self {
            config,
            current: None,
            sandboxes: HashMap::new(),
            writes: 0,
            error: None,
            failing: false,
            json: Vec::with_capacity(4096),
            unflushed: 0,
            lost,
        }
    }

    fn write(&mut self, event: &AuditEvent) {
        // Serialised into a buffer reused across events, so a failure
        // never leaves half a line in the file.
        let mut json = std::mem::take(&mut self.json);
        json.clear();
        if let Err(e) = serde_json::to_writer(&mut json, event) {
            self.json = json;
            self.fail(format!("cannot serialize audit event: {e}"));
            return;
        }
        json.push(b'\n');
        let line = shorthand_line(event);
        let date = self.file_date(event.base().time);
        self.writes += 1;
        let mut flushed = false;
        let result = self.files_for(date).and_then(|files| {
            // Flushed here rather than inside `write_all`, so the count of
            // events the buffer holds (lost if the disk refuses them) is
            // exact.
            if files.ocsf.buffer().len() + json.len() > files.ocsf.capacity() {
                files.ocsf.flush()?;
                flushed = true;
            }
            files.ocsf.write_all(&json)?;
            writeln!(files.shorthand, "{line}")
        });
        self.json = json;
        if flushed {
            self.unflushed = 0;
        }
        let mut ok = match result {
            Ok(()) => {
                self.unflushed += 1;
                true
            }
            Err(e) => {
                // Reopen on the next event: the disk may come back. What
                // the buffer held, and this event, are gone.
                self.count_lost(1);
                self.discard_files();
                self.fail(format!(
                    "cannot write audit log in {}: {e}",
                    self.config.dir.display()
                ));
                false
            }
        };
        if let Some(sandbox) = event_sandbox(event) {
            ok &= self.write_sandbox_line(sandbox, date, &line);
        }
        if ok {
            self.recovered();
        }
    }

    /// Appends `line` to the sandbox's own shorthand file for `date`;
    /// false (and the failure recorded) if that was not possible.
    fn write_sandbox_line(&mut self, sandbox: &str, date: Date, line: &str) -> bool {
        if !is_safe_sandbox_dir_name(sandbox) {
            self.fail(format!(
                "refusing to write a per-sandbox audit log for sandbox name {sandbox:?}: \
                 not a single path component"
            ));
            return false;
        }
        let writes = self.writes;
        let result = self.sandbox_file_for(sandbox, date).and_then(|open| {
            open.last_write = writes;
            writeln!(open.file, "{line}")
        });
        match result {
            Ok(()) => true,
            Err(e) => {
                self.sandboxes.remove(sandbox);
                self.fail(format!(
                    "cannot write audit log in {}: {e}",
                    sandbox_log_dir(&self.config.dir, sandbox).display()
                ));
                false
            }
        }
    }

    /// The sandbox's file for `date`, opening it (and pruning its
    /// directory) when the sandbox has none open or it is for another day.
    fn sandbox_file_for(&mut self, sandbox: &str, date: Date) -> io::Result<&mut SandboxFile> {
        // Never back to an older day than the file already open (see
        // `file_date`); matters only while the global files cannot open.
        let date = match self.sandboxes.get(sandbox) {
            Some(open) if open.date > date => open.date,
            _ => date,
        };
        let stale = self.sandboxes.get(sandbox).is_some_and(|f| f.date != date);
        if stale {
            self.close_sandbox(sandbox);
        }
        if !self.sandboxes.contains_key(sandbox) {
            self.make_room_for_sandbox_file();
            let dir = sandbox_log_dir(&self.config.dir, sandbox);
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dir)?;
            let file = BufWriter::with_capacity(
                FILE_BUFFER,
                open_log(&dir.join(file_name(SHORTHAND_PREFIX, date)))?,
            );
            if let Err(e) = prune(&dir, SHORTHAND_PREFIX, date, self.config.keep_days) {
                log::warn!(
                    "audit log rotation failed in {} for {SHORTHAND_PREFIX}.*.log: {e}",
                    dir.display()
                );
            }
            let open = SandboxFile {
                date,
                file,
                last_write: self.writes,
            };
            self.sandboxes.insert(sandbox.to_string(), open);
        }
        // Just ensured above; the error arm is unreachable but keeps this
        // panic-free.
        self.sandboxes
            .get_mut(sandbox)
            .ok_or_else(|| io::Error::other("sandbox audit file not open"))
    }

    /// Closes the least recently written sandbox files until one more fits.
    fn make_room_for_sandbox_file(&mut self) {
        while self.sandboxes.len() >= MAX_OPEN_SANDBOX_FILES {
            let oldest = self
                .sandboxes
                .iter()
                .min_by_key(|(_, f)| f.last_write)
                .map(|(name, _)| name.clone());
            match oldest {
                Some(name) => self.close_sandbox(&name),
                None => break,
            }
        }
    }

    /// Closes sandbox files of days before `today`: a sandbox not written
    /// since yesterday holds no descriptor (its next line reopens).
    fn close_idle_sandbox_files(&mut self, today: Date) {
        let idle: Vec<String> = self
            .sandboxes
            .iter()
            .filter(|(_, f)| f.date < today)
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            self.close_sandbox(&name);
        }
    }

    /// Flushes and forgets one sandbox's file.
    fn close_sandbox(&mut self, sandbox: &str) {
        if let Some(mut open) = self.sandboxes.remove(sandbox)
            && let Err(e) = open.file.flush()
        {
            self.fail(format!(
                "cannot flush audit log in {}: {e}",
                sandbox_log_dir(&self.config.dir, sandbox).display()
            ));
        }
    }

    /// The event's UTC date, but never before the file already open: a
    /// late event from yesterday goes into today's file instead of
    /// reopening (and possibly pruning) an older one.
    fn file_date(&self, time_ms: i64) -> Date {
        let date = utc_datetime(time_ms)
            .map(OffsetDateTime::date)
            .unwrap_or_else(|| OffsetDateTime::now_utc().date());
        match &self.current {
            Some(files) if files.date > date => files.date,
            _ => date,
        }
    }

    fn files_for(&mut self, date: Date) -> io::Result<&mut DayFiles> {
        let stale = self.current.as_ref().is_some_and(|f| f.date != date);
        if stale {
            self.flush();
            self.current = None;
        }
        if self.current.is_none() {
            self.close_idle_sandbox_files(date);
            let dir = &self.config.dir;
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
            let files = DayFiles {
                date,
                ocsf: BufWriter::with_capacity(
                    FILE_BUFFER,
                    open_log(&dir.join(file_name(OCSF_PREFIX, date)))?,
                ),
                shorthand: BufWriter::with_capacity(
                    FILE_BUFFER,
                    open_log(&dir.join(file_name(SHORTHAND_PREFIX, date)))?,
                ),
            };
            for prefix in [OCSF_PREFIX, SHORTHAND_PREFIX] {
                if let Err(e) = prune(dir, prefix, date, self.config.keep_days) {
                    log::warn!(
                        "audit log rotation failed in {} for {prefix}.*.log: {e}",
                        dir.display()
                    );
                }
            }
            self.current = Some(files);
        }
        // Just ensured above; the error arm is unreachable but keeps this
        // panic-free.
        self.current
            .as_mut()
            .ok_or_else(|| io::Error::other("audit files not open"))
    }

    /// Closes the day's files without writing what their buffers hold
    /// (already counted lost): a retry on drop could land a torn line
    /// after events counted as lost.
    fn discard_files(&mut self) {
        if let Some(files) = self.current.take() {
            let _ = files.ocsf.into_parts();
            let _ = files.shorthand.into_parts();
        }
    }

    /// Counts the buffered events, plus `more`, as lost.
    fn count_lost(&mut self, more: u64) {
        self.lost
            .fetch_add(self.unflushed + more, Ordering::Relaxed);
        self.unflushed = 0;
    }

    fn flush(&mut self) {
        if let Some(files) = self.current.as_mut() {
            let result = files.ocsf.flush();
            let ocsf_ok = result.is_ok();
            let result = result.and_then(|()| files.shorthand.flush());
            if ocsf_ok {
                self.unflushed = 0;
            }
            if let Err(e) = result {
                self.count_lost(0);
                self.discard_files();
                self.fail(format!(
                    "cannot flush audit log in {}: {e}",
                    self.config.dir.display()
                ));
            }
        }
        let failed: Vec<(String, io::Error)> = self
            .sandboxes
            .iter_mut()
            .filter_map(|(name, open)| open.file.flush().err().map(|e| (name.clone(), e)))
            .collect();
        for (name, e) in failed {
            self.sandboxes.remove(&name);
            self.fail(format!(
                "cannot flush audit log in {}: {e}",
                sandbox_log_dir(&self.config.dir, &name).display()
            ));
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            log::info!(
                "audit log in {} is writable again",
                self.config.dir.display()
            );
            self.failing = false;
        }
    }

    fn fail(&mut self, message: String) {
        if !self.failing {
            log::error!("{message}");
            self.failing = true;
        }
        self.error.get_or_insert(message);
    }

    fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }
}

/// The sandbox an event is about (`unmapped.sandbox`), if any.
fn event_sandbox(event: &AuditEvent) -> Option<&str> {
    event
        .base()
        .unmapped
        .get("sandbox")
        .and_then(|v| v.as_str())
        .filter(|name| !name.is_empty())
}

/// Opens (creating if needed) a log file for appending, mode 0640.
fn open_log(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // A disk that filled mid-line left a torn line: end it, so the next
    // event starts a line of its own and JSON readers lose one line only.
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    // A pre-existing file may be looser than we would create it.
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & !FILE_MODE != 0 {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// `<prefix>.YYYY-MM-DD.log`
pub fn file_name(prefix: &str, date: Date) -> String {
    format!(
        "{prefix}.{:04}-{:02}-{:02}.log",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The date in a `<prefix>.YYYY-MM-DD.log` name, or `None` for any other
/// name (such files are never touched).
pub fn parse_file_date(name: &str, prefix: &str) -> Option<Date> {
    let stamp = name
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_suffix(".log")?;
    let bytes = stamp.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = stamp.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let day = u8::try_from(number(8..10)?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// Names to delete so that only the newest `keep` dated files remain.
/// `current` (the file being written) is never selected.
fn expired(names: &[String], prefix: &str, current: Date, keep: usize) -> Vec<String> {
    let mut dated: Vec<(Date, &String)> = names
        .iter()
        .filter_map(|n| parse_file_date(n, prefix).map(|d| (d, n)))
        .collect();
    dated.sort_by_key(|(date, _)| std::cmp::Reverse(*date));
    dated
        .into_iter()
        .skip(keep.max(1))
        .filter(|(d, _)| *d != current)
        .map(|(_, n)| n.clone())
        .collect()
}

fn prune(dir: &Path, prefix: &str, current: Date, keep: usize) -> io::Result<()> {
    let names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for name in expired(&names, prefix, current, keep) {
        let path = dir.join(&name);
        if let Err(e) = fs::remove_file(&path) {
            log::warn!("cannot delete old audit log {}: {e}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{AppLifecycle, ConnectionFacts, DenyCause, NetworkActivity};

    /// Milliseconds at 12:00 UTC on the given day.
    fn noon(y: i32, m: u8, d: u8) -> i64 {
        let date = Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1000 + 12 * 3_600_000
    }

    fn ymd(y: i32, m: u8, d: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap()
    }

    fn config(dir: &Path, keep_days: usize, queue: usize) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            keep_days,
            queue,
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn file_names_round_trip() {
        let d = ymd(2026, 1, 5);
        assert_eq!(file_name("ocsf", d), "ocsf.2026-01-05.log");
        assert_eq!(parse_file_date("ocsf.2026-01-05.log", "ocsf"), Some(d));
        for bad in [
            "ocsf.2026-1-05.log",
            "ocsf.2026-13-05.log",
            "ocsf.2026-02-30.log",
            "ocsf.+026-01-05.log",
            "ocsf.2026-01-05.log.gz",
            "portcullis.2026-01-05.log",
            "ocsfx2026-01-05.log",
            "ocsf.2026-01-05",
        ] {
            assert_eq!(parse_file_date(bad, "ocsf"), None, "{bad}");
        }
    }

    #[test]
    fn expired_keeps_newest_and_current() {
        let names: Vec<String> = [
            "ocsf.2026-01-01.log",
            "ocsf.2026-01-03.log",
            "ocsf.2026-01-02.log",
            "ocsf.2026-01-04.log",
            "portcullis.2026-01-01.log",
            "notes.txt",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let mut got = expired(&names, "ocsf", ymd(2026, 1, 4), 2);
        got.sort();
        assert_eq!(got, ["ocsf.2026-01-01.log", "ocsf.2026-01-02.log"]);
        // keep 0 behaves like keep 1.
        assert_eq!(expired(&names, "ocsf", ymd(2026, 1, 4), 0).len(), 3);
        // The file being written survives even if newer ones exist.
        let got = expired(&names, "ocsf", ymd(2026, 1, 1), 1);
        assert!(!got.contains(&"ocsf.2026-01-01.log".to_string()));
    }

    #[tokio::test]
    async fn writes_json_and_shorthand_then_flushes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs/portcullis");
        let (log, handle) = AuditLog::start(config(&dir, 3, 16));
        let t = noon(2026, 3, 1);
        log.log(AppLifecycle::started().at(t).into());
        let facts = ConnectionFacts {
            sandbox: "sb".into(),
            dst_host: Some("example.com".into()),
            dst_port: 443,
            ..ConnectionFacts::default()
        };
        log.log(
            NetworkActivity::denied(&facts, DenyCause::Policy)
                .at(t + 1)
                .into(),
        );
        log.flush().await.unwrap();

        let json = read(&dir, "ocsf.2026-03-01.log");
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["class_uid"], 6002);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["class_uid"], 4001);

        let short = read(&dir, "portcullis.2026-03-01.log");
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(
            lines,
            [
                "2026-03-01T12:00:00.000Z OCSF LIFECYCLE:START [INFO] Portcullis success",
                "2026-03-01T12:00:00.001Z OCSF NET:OPEN [MED] DENIED example.com:443 \
                 [policy:- engine:opa] [reason:CONNECT denied example.com:443]",
            ]
        );

        for name in ["ocsf.2026-03-01.log", "portcullis.2026-03-01.log"] {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "{name}");
        }
        drop(log);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn rotates_by_event_date_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("unrelated.txt"), "keep me").unwrap();
        fs::write(dir.join("ocsf.2025-12-31.log"), "old\n").unwrap();
        let (log, handle) = AuditLog::start(config(dir, 2, 64));
        for day in 1..=4 {
            log.log(AppLifecycle::started().at(noon(2026, 1, day)).into());
            // Flush per day so each rotation step is observed in order.
            log.flush().await.unwrap();
        }
        // A late event from an earlier day goes to the current file.
        log.log(AppLifecycle::stopped(None).at(noon(2026, 1, 2)).into());
        log.flush().await.unwrap();

        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ocsf.2026-01-03.log",
                "ocsf.2026-01-04.log",
                "portcullis.2026-01-03.log",
                "portcullis.2026-01-04.log",
                "unrelated.txt",
            ]
        );
        let today = read(dir, "portcullis.2026-01-04.log");
        assert_eq!(today.lines().count(), 2);
        assert!(today.lines().nth(1).unwrap().contains("LIFECYCLE:STOP"));
        drop(log);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn large_backlog_is_written_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, handle) = AuditLog::start(config(tmp.path(), 1, 4 * MAX_BATCH));
        let t = noon(2026, 5, 5);
        for i in 0..(3 * MAX_BATCH as i64) {
            log.log(AppLifecycle::started().at(t + i).into());
        }
        log.flush().await.unwrap();
        assert_eq!(log.dropped(), 0);
        let text = read(tmp.path(), "portcullis.2026-05-05.log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3 * MAX_BATCH);
        assert!(lines[0].starts_with("2026-05-05T12:00:00.000Z OCSF "));
        // Event i is stamped i ms after noon.
        let second_batch = format!(
            "2026-05-05T12:00:{:02}.{:03}Z OCSF ",
            MAX_BATCH / 1000,
            MAX_BATCH % 1000
        );
        assert!(lines[MAX_BATCH].starts_with(&second_batch));
        drop(log);
        handle.await.unwrap();
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (log, rx) = AuditLog::channel(2);
        for _ in 0..5 {
            log.log(AppLifecycle::started().into());
        }
        assert_eq!(log.dropped(), 3);
        // Clones share the counter.
        let clone = log.clone();
        drop(rx);
        clone.log(AppLifecycle::started().into());
        assert_eq!(log.dropped(), 4);
    }

    #[test]
    fn zero_queue_is_clamped() {
        let (log, _rx) = AuditLog::channel(0);
        log.log(AppLifecycle::started().into());
        assert_eq!(log.dropped(), 0);
    }

    #[tokio::test]
    async fn flush_after_writer_stopped_is_an_error() {
        let (log, rx) = AuditLog::channel(4);
        drop(rx);
        assert_eq!(log.flush().await, Err(AuditError::Closed));
    }

    #[tokio::test]
    async fn flush_reports_write_failure() {
        let tmp = tempfile::tempdir().unwrap();
        // The log "directory" is a regular file, so nothing can be created.
        let not_a_dir = tmp.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let (log, handle) = AuditLog::start(config(&not_a_dir, 1, 4));
        log.log(AppLifecycle::started().into());
        let err = log.flush().await.unwrap_err();
        match err {
            AuditError::Write(msg) => assert!(msg.contains("file"), "{msg}"),
            other => panic!("unexpected {other:?}"),
        }
        // The error is reported once; a later flush with nothing new is ok.
        assert_eq!(log.flush().await, Ok(()));
        drop(log);
        handle.await.unwrap();
    }

    /// A denied connection from `sandbox` at `time_ms`.
    fn denial(sandbox: &str, host: &str, time_ms: i64) -> AuditEvent {
        let facts = ConnectionFacts {
            sandbox: sandbox.into(),
            dst_host: Some(host.into()),
            dst_port: 443,
            ..ConnectionFacts::default()
        };
        NetworkActivity::denied(&facts, DenyCause::Policy)
            .at(time_ms)
            .into()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sandbox_dirs_and_names() {
        assert_eq!(
            sandbox_log_dir(Path::new("/var/log/portcullis"), "sb-1"),
            PathBuf::from("/var/log/portcullis/sandboxes/sb-1")
        );
        for good in ["sb", "a_b-c", "0", "a.b"] {
            assert!(is_safe_sandbox_dir_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a..b", "../x", "a\\b", "a\0b"] {
            assert!(!is_safe_sandbox_dir_name(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn each_sandbox_file_gets_only_its_own_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (log, handle) = AuditLog::start(config(dir, 3, 16));
        let t = noon(2026, 3, 1);
        log.log(AppLifecycle::started().at(t).into());
        log.log(denial("alpha", "a.example", t + 1));
        log.log(denial("beta", "b.example", t + 2));
        log.log(denial("alpha", "c.example", t + 3));
        log.flush().await.unwrap();

        let global = read(dir, "portcullis.2026-03-01.log");
        assert_eq!(global.lines().count(), 4);
        let alpha = read(&sandbox_log_dir(dir, "alpha"), "portcullis.2026-03-01.log");
        let beta = read(&sandbox_log_dir(dir, "beta"), "portcullis.2026-03-01.log");
        let global_lines: Vec<&str> = global.lines().collect();
        // Same text as the global lines, only the sandbox's own.
        assert_eq!(
            alpha.lines().collect::<Vec<_>>(),
            [global_lines[1], global_lines[3]]
        );
        assert_eq!(beta.lines().collect::<Vec<_>>(), [global_lines[2]]);
        assert!(alpha.contains("a.example") && alpha.contains("c.example"));
        assert!(!alpha.contains("b.example") && !alpha.contains("LIFECYCLE"));
        // No JSON log per sandbox.
        assert_eq!(
            names_in(&sandbox_log_dir(dir, "alpha")),
            ["portcullis.2026-03-01.log"]
        );
        let file_mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            file_mode(&sandbox_log_dir(dir, "alpha").join("portcullis.2026-03-01.log")),
            FILE_MODE
        );
        assert_eq!(file_mode(&dir.join(SANDBOXES_DIR)), DIR_MODE);
        assert_eq!(file_mode(&sandbox_log_dir(dir, "beta")), DIR_MODE);
        drop(log);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn sandbox_from_with_unmapped_is_honoured_and_empty_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (log, handle) = AuditLog::start(config(dir, 3, 16));
        let t = noon(2026, 3, 2);
        log.log(
            AppLifecycle::started()
                .at(t)
                .with_unmapped("sandbox", "gamma")
                .into(),
        );
        log.log(
            AppLifecycle::started()
                .at(t)
                .with_unmapped("sandbox", "")
                .into(),
        );
        log.log(
            AppLifecycle::started()
                .at(t)
                .with_unmapped("sandbox", 7)
                .into(),
        );
        log.flush().await.unwrap();
        assert_eq!(read(dir, "portcullis.2026-03-02.log").lines().count(), 3);
        assert_eq!(names_in(&dir.join(SANDBOXES_DIR)), ["gamma"]);
        let gamma = read(&sandbox_log_dir(dir, "gamma"), "portcullis.2026-03-02.log");
        assert_eq!(gamma.lines().count(), 1);
        drop(log);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn unsafe_sandbox_name_is_skipped_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        let (log, handle) = AuditLog::start(config(&dir, 3, 16));
        let t = noon(2026, 3, 3);
        log.log(denial("../escape", "a.example", t));
        log.log(denial("a/b", "a.example", t));
        let err = log.flush().await.unwrap_err();
        match err {
            AuditError::Write(msg) => assert!(msg.contains("../escape"), "{msg}"),
            other => panic!("unexpected {other:?}"),
        }
        // The global log still has both lines; nothing was created outside.
        assert_eq!(read(&dir, "portcullis.2026-03-03.log").lines().count(), 2);
        assert!(!tmp.path().join("escape").exists());
        assert!(!dir.join(SANDBOXES_DIR).exists());
        drop(log);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn sandbox_dirs_rotate_and_prune_independently() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let alpha_dir = sandbox_log_dir(dir, "alpha");
        fs::create_dir_all(&alpha_dir).unwrap();
        fs::write(alpha_dir.join("portcullis.2025-12-30.log"), "old\n").unwrap();
        fs::write(alpha_dir.join("notes.txt"), "keep me").unwrap();
        let (log, handle) = AuditLog::start(config(dir, 2, 64));
        for day in 1..=4 {
            log.log(denial("alpha", "a.example", noon(2026, 1, day)));
            if day == 1 {
                log.log(denial("beta", "b.example", noon(2026, 1, day)));
            }
            log.flush().await.unwrap();
        }
        // A late event from an earlier day goes to the current file.
        log.log(denial("alpha", "late.example", noon(2026, 1, 2)));
        log.flush().await.unwrap();

        assert_eq!(
            names_in(&alpha_dir),
            [
                "notes.txt",
                "portcullis.2026-01-03.log",
                "portcullis.2026-01-04.log"
            ]
        );
        let today = read(&alpha_dir, "portcullis.2026-01-04.log");
        assert_eq!(today.lines().count(), 2);
        assert!(today.lines().nth(1).unwrap().contains("late.example"));
        // beta was written once; pruning happens when a sandbox file opens,
        // so its only file stays.
        assert_eq!(
            names_in(&sandbox_log_dir(dir, "beta")),
            ["portcullis.2026-01-01.log"]
        );
        drop(log);
        handle.await.unwrap();
    }

    #[test]
    fn a_line_torn_by_a_full_disk_is_ended_before_the_next_event() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ocsf.2026-04-01.log"), "{\"torn").unwrap();
        let mut writer = Writer::new(config(tmp.path(), 3, 1), Arc::default());
        writer.write(&denial("alpha", "a.example", noon(2026, 4, 1)));
        writer.flush();
        let text = read(tmp.path(), "ocsf.2026-04-01.log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "{\"torn");
        let event: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(event["class_uid"], 4001);
        assert_eq!(writer.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn idle_sandbox_handles_are_closed_after_a_day() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(config(tmp.path(), 3, 1), Arc::default());
        writer.write(&denial("alpha", "a.example", noon(2026, 4, 1)));
        writer.write(&denial("beta", "b.example", noon(2026, 4, 1)));
        assert_eq!(writer.sandboxes.len(), 2);
        writer.write(&denial("alpha", "a.example", noon(2026, 4, 2)));
        // beta was not written on the new day: its handle is gone.
        let open: Vec<&String> = writer.sandboxes.keys().collect();
        assert_eq!(open, ["alpha"]);
        // And it reopens on demand.
        writer.write(&denial("beta", "b.example", noon(2026, 4, 2)));
        assert_eq!(writer.sandboxes.len(), 2);
        writer.flush();
        assert_eq!(writer.take_error(), None);
        let beta = read(
            &sandbox_log_dir(tmp.path(), "beta"),
            "portcullis.2026-04-02.log",
        );
        assert_eq!(beta.lines().count(), 1);
    }

    #[test]
    fn open_sandbox_files_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(config(tmp.path(), 3, 1), Arc::default());
        let t = noon(2026, 4, 3);
        for i in 0..(MAX_OPEN_SANDBOX_FILES + 5) {
            writer.write(&denial(&format!("sb{i}"), "a.example", t));
        }
        assert_eq!(writer.sandboxes.len(), MAX_OPEN_SANDBOX_FILES);
        // The least recently written were closed first.
        assert!(!writer.sandboxes.contains_key("sb0"));
        assert!(writer.sandboxes.contains_key("sb5"));
        // A closed sandbox reopens and appends.
        writer.write(&denial("sb0", "again.example", t));
        writer.flush();
        assert_eq!(writer.take_error(), None);
        let sb0 = read(
            &sandbox_log_dir(tmp.path(), "sb0"),
            "portcullis.2026-04-03.log",
        );
        assert_eq!(sb0.lines().count(), 2);
    }

    #[tokio::test]
    async fn loose_existing_file_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let name = "portcullis.2026-02-02.log";
        fs::write(dir.join(name), "").unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o666)).unwrap();
        let (log, handle) = AuditLog::start(config(dir, 3, 4));
        log.log(AppLifecycle::started().at(noon(2026, 2, 2)).into());
        log.flush().await.unwrap();
        let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        drop(log);
        handle.await.unwrap();
    }
}
