//! Moving bytes between the workload and the upstream.

use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Buffer per direction. 64 KiB keeps a loopback relay near line rate
/// without holding much memory per connection.
const BUFFER: usize = 64 * 1024;

/// Relays both directions until both sides close, or `stop` fires (a policy
/// reload withdrew the permission). Returns bytes (to upstream, to client).
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<(u64, u64)> {
    tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => result,
        () = stop => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
            Err(std::io::Error::other("closed by policy"))
        }
    }
}
