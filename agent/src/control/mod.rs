//! The control plane: a gRPC service on a Unix socket, for operators only.

pub mod client;
pub mod server;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("portcullis.v1");
}
