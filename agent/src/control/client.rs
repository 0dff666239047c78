//! Connecting to the agent's control socket.

use std::path::Path;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::pb::control_client::ControlClient;

pub async fn connect(socket: &Path) -> Result<ControlClient<Channel>> {
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector picks the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent at {}: is `portcullis agent` running (start it with `cargo xtask run`)?",
                socket.display()
            )
        })?;
    Ok(ControlClient::new(channel))
}

/// A gRPC error as the user should read it: the server's message.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
