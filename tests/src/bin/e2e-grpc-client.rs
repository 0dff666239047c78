//! The gRPC workload of the end-to-end tests:
//! `e2e-grpc-client https://HOST:PORT MESSAGE` calls `e2e.Echo/Say` over
//! HTTP/2 and TLS and prints the reply's message.
//!
//! It trusts only the CA bundle named by `SSL_CERT_FILE` (required),
//! resolves HOST through the system resolver and sends SNI = HOST, so that
//! inside a sandbox both DNS and TLS go through the proxy. Exits 1 on any
//! failure, with the error or gRPC status on stderr.

use std::{process::ExitCode, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[allow(clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("e2e");
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, message] = args.as_slice() else {
        eprintln!("usage: e2e-grpc-client https://HOST:PORT MESSAGE");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e-grpc-client: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(call(url, message)) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e-grpc-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(url: &str, message: &str) -> Result<String, BoxError> {
    let ca_file = std::env::var_os("SSL_CERT_FILE")
        .ok_or("SSL_CERT_FILE must name the CA bundle to trust")?;
    let ca = std::fs::read(&ca_file)
        .map_err(|e| format!("SSL_CERT_FILE {}: {e}", ca_file.to_string_lossy()))?;

    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = endpoint
        .uri()
        .host()
        .ok_or_else(|| format!("no host in {url}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(host);
    let channel = endpoint
        .tls_config(tls)
        .map_err(|e| format!("TLS setup: {}", chain(&e)))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect to {url}: {}", chain(&e)))?;

    let mut client = pb::echo_client::EchoClient::new(channel);
    let reply = client
        .say(pb::EchoRequest {
            message: message.to_string(),
        })
        .await
        .map_err(|status| {
            let mut msg = format!("{status}");
            if let Some(source) = std::error::Error::source(&status) {
                msg.push_str(&format!(": {}", chain(source)));
            }
            msg
        })?;
    Ok(reply.into_inner().message)
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
