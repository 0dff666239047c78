//! Accept loops that outlive resource exhaustion. When descriptors or
//! memory run out, `accept` fails while the connection stays queued in the
//! kernel, so an immediate retry fails the same way: the loop pauses,
//! says so once per outage, and serves the queue once resources return.
//! The proxy's loop also keeps a reserve of descriptors ([`Reserve`]) so a
//! sandbox that opens connections without end cannot lock out the
//! operator, DNS or the audit log.

use std::{future::Future, io, os::fd::RawFd, time::Duration};

use tokio_stream::wrappers::ReceiverStream;

/// Pause after a failed accept.
pub const RETRY: Duration = Duration::from_millis(20);

/// One listener's failure state.
pub struct Retry {
    what: &'static str,
    failing: bool,
}

impl Retry {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: false,
        }
    }

    /// A connection was accepted.
    pub fn accepted(&mut self) {
        if self.failing {
            log::info!("{}: accepting connections again", self.what);
            self.failing = false;
        }
    }

    /// An accept failed: logs the first failure of an outage, then waits.
    pub async fn failed(&mut self, e: &io::Error) {
        if !self.failing {
            log::warn!(
                "{}: accept failed: {e}; retrying every {RETRY:?}",
                self.what
            );
            self.failing = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The connections `accept` yields, as a stream for a server that takes
/// one (tonic), accepted by a loop of ours: tonic's own would retry a
/// failing accept at once, spinning while descriptors are exhausted.
/// `accept` returns `Ok(None)` for a connection it refused.
pub fn incoming<S, A, F>(what: &'static str, mut accept: A) -> ReceiverStream<io::Result<S>>
where
    S: Send + 'static,
    A: FnMut() -> F + Send + 'static,
    F: Future<Output = io::Result<Option<S>>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut retry = Retry::new(what);
        loop {
            match accept().await {
                Ok(stream) => {
                    retry.accepted();
                    if let Some(stream) = stream
                        && tx.send(Ok(stream)).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => retry.failed(&e).await,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Descriptors the proxy leaves for the control socket, DNS, the audit
/// log, the store and `/proc` reads.
pub const RESERVED_FDS: u64 = 256;

/// Whether a connection accepted as descriptor `fd` under a descriptor
/// `limit` eats into the reserve. Descriptors are allocated lowest first,
/// so `fd` = N means at least N are open.
pub fn within_reserve(fd: u64, limit: u64) -> bool {
    fd.saturating_add(RESERVED_FDS) >= limit
}

/// The process's descriptor limit, read once (the daemon raises it at
/// start, before any connection).
pub fn descriptor_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            u64::MAX
        }
    })
}

/// How often a run of refusals is reported.
const REFUSALS_REPORTED_EVERY: Duration = Duration::from_secs(10);

/// Refuses connections that would eat into [`RESERVED_FDS`], saying so at
/// most every [`REFUSALS_REPORTED_EVERY`]. (Freed descriptors leave holes
/// that new ones fill first, so a low descriptor number does not mean the
/// pressure is over: there is no "free again" to report reliably.)
pub struct Reserve {
    what: &'static str,
    limit: u64,
    refused: u64,
    reported: Option<std::time::Instant>,
}

impl Reserve {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            limit: descriptor_limit(),
            refused: 0,
            reported: None,
        }
    }

    /// Whether the connection accepted as `fd` must be refused.
    pub fn must_refuse(&mut self, fd: RawFd) -> bool {
        let fd = u64::try_from(fd).unwrap_or(u64::MAX);
        if !within_reserve(fd, self.limit) {
            return false;
        }
        self.refused += 1;
        if self
            .reported
            .is_none_or(|at| at.elapsed() >= REFUSALS_REPORTED_EVERY)
        {
            log::warn!(
                "{}: {fd} of {} descriptors in use; refusing new connections to keep \
                 {RESERVED_FDS} for the control socket, DNS and the audit log ({} refused \
                 since the last report)",
                self.what,
                self.limit,
                self.refused
            );
            self.reported = Some(std::time::Instant::now());
            self.refused = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_starts_reserved_fds_below_the_limit() {
        assert!(!within_reserve(0, 20_000));
        assert!(!within_reserve(20_000 - RESERVED_FDS - 1, 20_000));
        assert!(within_reserve(20_000 - RESERVED_FDS, 20_000));
        assert!(within_reserve(19_999, 20_000));
        // A limit below the reserve refuses everything; no limit, nothing.
        assert!(within_reserve(3, 100));
        assert!(!within_reserve(1 << 40, u64::MAX));
    }
}
