//! Moving bytes between the workload and the upstream, after an L4 allow.
//!
//! Two implementations, chosen by `relay` in the agent configuration and
//! compared by `cargo xtask bench`:
//! - `copy`: tokio's bidirectional copy through userspace buffers;
//! - `splice`: splice(2) through a pipe per direction, so payload bytes
//!   never enter userspace.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use serde::Deserialize;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

/// Buffer per direction for `copy`. 64 KiB keeps a loopback relay near line
/// rate without holding much memory per connection.
const COPY_BUFFER: usize = 64 * 1024;
/// Bytes moved per splice call.
const SPLICE_CHUNK: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    Copy,
    #[default]
    Splice,
}

/// Relays both directions until both sides close, or `stop` fires (a policy
/// reload withdrew the permission). Returns bytes (to upstream, to client).
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mode: RelayMode,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<(u64, u64)> {
    let result = tokio::select! {
        result = async {
            match mode {
                RelayMode::Copy => {
                    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER).await
                }
                RelayMode::Splice => splice_bidirectional(&client, &upstream).await,
            }
        } => result,
        () = stop => Err(io::Error::other("closed by policy")),
    };
    if result.is_err() {
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    }
    result
}

async fn splice_bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (a_to_b, b_to_a) = (Pipe::new()?, Pipe::new()?);
    let (up, down) = tokio::join!(splice_one_way(a, b, &a_to_b), splice_one_way(b, a, &b_to_a));
    Ok((up?, down?))
}

/// Moves bytes `from` -> `to` until `from` reaches EOF, then half-closes
/// `to`. The pipe is drained after every fill, so it never blocks.
async fn splice_one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write_fd(), SPLICE_CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // SAFETY: valid socket fd; half-close propagates the EOF.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read_fd(), to.as_raw_fd(), left)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets
    // are required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking pipe: (read end, write end).
struct Pipe(OwnedFd, OwnedFd);

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that we now own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per call; failure just keeps 64 KiB.
        // SAFETY: valid pipe fd.
        unsafe {
            libc::fcntl(
                w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                SPLICE_CHUNK as libc::c_int,
            )
        };
        Ok(Self(r, w))
    }

    fn read_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn write_fd(&self) -> RawFd {
        self.1.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A relay between two real socket pairs carries bytes both ways and
    /// propagates half-closes, in both modes.
    async fn round_trip(mode: RelayMode) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (proxied, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        let relay = tokio::spawn(relay(proxied, upstream, mode, std::future::pending()));

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(b"done").await.unwrap();
            got
        });
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(echo.await.unwrap(), expected);
        assert_eq!(reply, b"done");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (3_000_000, 4));
    }

    #[tokio::test]
    async fn copy_relays_both_ways() {
        round_trip(RelayMode::Copy).await;
    }

    #[tokio::test]
    async fn splice_relays_both_ways() {
        round_trip(RelayMode::Splice).await;
    }

    #[tokio::test]
    async fn stop_closes_the_relay() {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (proxied, _) = front.accept().await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let result = relay(proxied, upstream, RelayMode::Splice, async {}).await;
        assert!(result.is_err());
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).await.unwrap(),
            0,
            "client sees the close"
        );
    }
}
