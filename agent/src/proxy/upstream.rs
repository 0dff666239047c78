//! Dialling the real destination: marked so the hooks let it through, and
//! never toward addresses a sandbox must not reach through the agent.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses the agent never dials for a sandbox, whatever the policy says:
/// loopback (the agent itself, host services), link-local (cloud metadata
/// at 169.254.169.254 included) and unspecified.
pub fn always_blocked(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("not unicast")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("not unicast"),
        // fd00:ec2::254, the IPv6 metadata endpoint.
        IpAddr::V6(v6) if v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] => {
            Some("metadata")
        }
        _ => None,
    }
}

/// Connects to `addr` with SO_MARK set before connect.
pub async fn dial(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_and_metadata_are_always_blocked() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "0.0.0.0",
        ] {
            assert!(always_blocked(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["192.0.2.10", "2001:db8::2", "10.1.2.3"] {
            assert_eq!(always_blocked(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
