//! Connecting to the agent's control socket.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::pb::control_client::ControlClient;

/// A remote agent's `control_tcp` listener and this operator's certificate.
#[derive(Clone, Debug)]
pub struct Remote {
    /// `https://host:port`
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

static REMOTE: OnceLock<Remote> = OnceLock::new();

/// Makes every later `connect` go to `remote` instead of the local socket.
pub fn use_remote(remote: Remote) {
    let _ = REMOTE.set(remote);
}

async fn connect_remote(remote: &Remote) -> Result<ControlClient<Channel>> {
    let read = |p: &Path, flag: &str| {
        std::fs::read(p).with_context(|| format!("{flag} {}: cannot read", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&remote.ca, "--remote-ca")?))
        .identity(Identity::from_pem(
            read(&remote.cert, "--remote-cert")?,
            read(&remote.key, "--remote-key")?,
        ));
    let channel = Endpoint::from_shared(remote.url.clone())
        .with_context(|| format!("--remote {}: not a URL like https://host:7443", remote.url))?
        .tls_config(tls)
        .context("--remote: invalid TLS settings")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the agent at {}", remote.url))?;
    Ok(ControlClient::new(channel))
}

/// The control plane: the remote agent if one was chosen, else the local
/// Unix socket.
pub async fn connect(socket: &Path) -> Result<ControlClient<Channel>> {
    if let Some(remote) = REMOTE.get() {
        return connect_remote(remote).await;
    }
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
