//! Accept loops that outlive resource exhaustion. When descriptors or
//! memory run out, `accept` fails while the connection stays queued in the
//! kernel, so an immediate retry fails the same way: the loop pauses,
//! says so once per outage, and serves the queue once resources return.

use std::{future::Future, io, time::Duration};

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
