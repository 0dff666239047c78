//! Dialling the real destination, marked so the hooks let it through.
//! Which addresses may be dialled is `policy::ssrf`'s decision.

use std::{net::SocketAddr, os::fd::AsRawFd, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A dial refused because the agent's descriptors are down to the reserve
/// it keeps for its operator ([`crate::accept::RESERVED_FDS`]).
#[derive(Debug)]
pub struct AtDescriptorReserve;

impl std::fmt::Display for AtDescriptorReserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the agent holds too many connections (its descriptors are down to the reserve \
             it keeps for its operator); retry once some close",
        )
    }
}

impl std::error::Error for AtDescriptorReserve {}

impl AtDescriptorReserve {
    /// Whether `e` is this refusal.
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Self>())
    }
}

/// Connects to `addr` with SO_MARK set before connect.
pub async fn dial(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Connections accepted just before the reserve was reached dial too;
    // the reserve holds for their upstream sockets as well.
    let fd = u64::try_from(socket.as_raw_fd()).unwrap_or(u64::MAX);
    if crate::accept::within_reserve(fd, crate::accept::descriptor_limit()) {
        return Err(std::io::Error::other(AtDescriptorReserve));
    }
    set_mark(&socket, mark)?;
    socket.set_nodelay(true)?;
    match tokio::time::timeout(DIAL_TIMEOUT, socket.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )),
    }
}

fn set_mark(socket: &impl AsRawFd, mark: u32) -> std::io::Result<()> {
    // SAFETY: valid fd and option buffer of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
