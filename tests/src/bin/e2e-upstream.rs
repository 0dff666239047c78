//! The upstream fixture of the end-to-end tests: an HTTP server that tells
//! the client what it received, run inside a test network namespace.
//!
//! - `gen-certs DIR HOST [HOST...]`: writes a throwaway test CA
//!   (`DIR/ca.pem`) and a server certificate for the hosts
//!   (`DIR/cert.pem`, key in `DIR/key.pem`). IP literals become IP SANs.
//! - `serve [--tls-port P] [--plain-port Q] [--cert DIR]`: serves HTTPS
//!   (ALPN `h2` and `http/1.1`) on `[::]:P` with `DIR/cert.pem` and
//!   `DIR/key.pem`, and plaintext HTTP/1.1 on `[::]:Q`, both dual-stack.
//!   Prints `ready` once both listen, then serves until killed.
//!
//! Every request gets a 200 `application/json` reply describing it:
//! `{"method","path","query","host","version","body_len","te","authorization","x-api-key"}`, after the
//! whole request body has been read; HEAD gets the headers only. Special
//! cases:
//! - `/trailers`: the same JSON, streamed, ending with the trailers
//!   `grpc-status: 0` and `x-trailer: yes`;
//! - `/mirror/...`: the same JSON plus `headers` (every header, as
//!   `[name, value]` pairs), `authority` (the target's, HTTP/2's
//!   `:authority`) and `body` (the body as lossy UTF-8), so a test
//!   can look for a value anywhere in what arrived;
//! - `/ws`: a WebSocket (RFC 6455, HTTP/1.1 upgrade) echo server;
//! - `content-type: application/grpc`: the `e2e.Echo` gRPC service, whose
//!   `Say` replies with `echo: ` and the request's message.
//!
//! Nothing is logged on success; errors go to stderr.

use std::{
    convert::Infallible,
    io::Write,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};
use tower::ServiceExt;

#[allow(clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("e2e");
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

const USAGE: &str = "usage: e2e-upstream gen-certs DIR HOST [HOST...]\n       \
                     e2e-upstream serve [--tls-port P] [--plain-port Q] [--cert DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen-certs") if args.len() >= 3 => gen_certs(Path::new(&args[1]), &args[2..]),
        Some("serve") => parse_serve(&args[1..]).and_then(serve),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// gen-certs

fn gen_certs(dir: &Path, hosts: &[String]) -> Result<(), BoxError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Portcullis e2e test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    // `new` makes IP SANs of the names that parse as IP addresses.
    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name.push(DnType::CommonName, &hosts[0]);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf_cert.pem())?;
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("key.pem"))?;
    key_file.write_all(leaf_key.serialize_pem().as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------
// serve

struct ServeArgs {
    tls_port: Option<u16>,
    plain_port: Option<u16>,
    cert: Option<PathBuf>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, BoxError> {
    let mut out = ServeArgs {
        tls_port: None,
        plain_port: None,
        cert: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--tls-port" => out.tls_port = Some(value.parse()?),
            "--plain-port" => out.plain_port = Some(value.parse()?),
            "--cert" => out.cert = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    if out.tls_port.is_none() && out.plain_port.is_none() {
        return Err(format!("nothing to serve\n{USAGE}").into());
    }
    if out.tls_port.is_some() && out.cert.is_none() {
        return Err("--tls-port needs --cert DIR".into());
    }
    Ok(out)
}

fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let tls = match (&args.tls_port, &args.cert) {
            (Some(port), Some(dir)) => Some((listen(*port)?, tls_acceptor(dir)?)),
            _ => None,
        };
        let plain = args.plain_port.map(listen).transpose()?;

        println!("ready");
        std::io::stdout().flush()?;

        let mut tasks = tokio::task::JoinSet::new();
        if let Some((listener, acceptor)) = tls {
            tasks.spawn(accept_tls(listener, acceptor));
        }
        if let Some(listener) = plain {
            tasks.spawn(accept_plain(listener));
        }
        while let Some(done) = tasks.join_next().await {
            done?;
        }
        Ok(())
    })
}

/// A dual-stack listener on `[::]:port`; plain IPv4 where IPv6 is off.
fn listen(port: u16) -> Result<TcpListener, BoxError> {
    use socket2::{Domain, Socket, Type};
    let dual = || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    };
    let socket = match dual() {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            eprintln!("e2e-upstream: no IPv6 here ({e}): port {port} listens on IPv4 only");
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            s
        }
        Err(e) => return Err(format!("bind port {port}: {e}").into()),
    };
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into())?)
}

fn tls_acceptor(dir: &Path) -> Result<tokio_rustls::TlsAcceptor, BoxError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("e2e-upstream: accept: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("e2e-upstream: TLS handshake with {peer}: {e}");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let service = hyper::service::service_fn(handle);
            let result = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
                    .map_err(BoxError::from)
            } else {
                // No ALPN or `http/1.1`: HTTP/1.1, or HTTP/2 with prior
                // knowledge if that is what the client speaks.
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(io, service)
                    .await
            };
            if let Err(e) = result {
                eprintln!("e2e-upstream: connection from {peer} (TLS): {e}");
            }
        });
    }
}

async fn accept_plain(listener: TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("e2e-upstream: accept: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let result = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle))
                .with_upgrades()
                .await;
            if let Err(e) = result {
                eprintln!("e2e-upstream: connection from {peer}: {e}");
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Requests

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        let Ok(resp) = pb::echo_server::EchoServer::new(EchoService)
            .oneshot(req)
            .await;
        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()));
    }
    if req.uri().path() == "/ws" {
        return Ok(websocket_upgrade(req));
    }
    Ok(describe(req).await)
}

/// The request as the JSON reply describes it, before its body is read.
fn summary(req: &Request<Incoming>) -> serde_json::Map<String, serde_json::Value> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let version = match req.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/3",
    };
    let te = req
        .headers()
        .get(header::TE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut m = serde_json::Map::new();
    m.insert("method".into(), req.method().as_str().into());
    m.insert("path".into(), req.uri().path().into());
    m.insert("query".into(), req.uri().query().into());
    m.insert("host".into(), host.into());
    m.insert("version".into(), version.into());
    m.insert("te".into(), te.into());
    // What credentials arrived: tests check that the real value (and never
    // a placeholder) reaches the upstream, and only the upstream.
    for name in ["authorization", "x-api-key"] {
        let value = req
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        m.insert(name.into(), value.into());
    }
    m
}

async fn describe(req: Request<Incoming>) -> Response<Body> {
    let mut info = summary(&req);
    let head = req.method() == Method::HEAD;
    let trailers = req.uri().path() == "/trailers";
    let mirror = req.uri().path().starts_with("/mirror/");
    if mirror {
        let headers: Vec<[String; 2]> = req
            .headers()
            .iter()
            .map(|(name, value)| {
                [
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ]
            })
            .collect();
        info.insert("headers".into(), serde_json::json!(headers));
        let authority = req.uri().authority().map(|a| a.to_string());
        info.insert("authority".into(), authority.into());
    }
    let body_len = match req.into_body().collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            if mirror {
                info.insert("body".into(), String::from_utf8_lossy(&body).into());
            }
            body.len()
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}\n"),
            );
        }
    };
    info.insert("body_len".into(), body_len.into());
    let mut json = serde_json::Value::Object(info).to_string();
    json.push('\n');

    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    let resp = if head {
        builder
            .header(header::CONTENT_LENGTH, json.len())
            .body(Empty::new().map_err(BoxError::from).boxed_unsync())
    } else if trailers {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("x-trailer", HeaderValue::from_static("yes"));
        let frames: [Result<Frame<Bytes>, BoxError>; 2] =
            [Ok(Frame::data(Bytes::from(json))), Ok(Frame::trailers(t))];
        builder
            .header(header::TRAILER, "grpc-status, x-trailer")
            .body(StreamBody::new(tokio_stream::iter(frames)).boxed_unsync())
    } else {
        builder.body(full(json))
    };
    resp.expect("valid response")
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(BoxError::from)
        .boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(body))
        .expect("valid response")
}

// ---------------------------------------------------------------------------
// gRPC

struct EchoService;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoReply>, tonic::Status> {
        let message = format!("echo: {}", request.into_inner().message);
        Ok(tonic::Response::new(pb::EchoReply { message }))
    }
}

// ---------------------------------------------------------------------------
// WebSocket

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames larger than this end the connection (close 1009).
const WS_MAX_PAYLOAD: u64 = 64 << 20;

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn websocket_upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && header_has_token(&req, header::UPGRADE, "websocket")
        && header_has_token(&req, header::CONNECTION, "upgrade");
    let Some(key) = key.filter(|_| upgrade) else {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "/ws needs an HTTP/1.1 WebSocket upgrade\n".into(),
        );
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = ws_echo(TokioIo::new(upgraded)).await {
                    eprintln!("e2e-upstream: websocket: {e}");
                }
            }
            Err(e) => eprintln!("e2e-upstream: websocket upgrade: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// Echoes data frames (text, binary, continuation) with the same FIN bit,
/// opcode and payload; answers ping with pong and close with close.
async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        match io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (fin_opcode, opcode) = (head[0] & 0x8f, head[0] & 0x0f);
        if head[0] & 0x70 != 0 {
            // No extension was negotiated, so RSV bits are a protocol error.
            return ws_close(&mut io, 1002).await;
        }
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            n => u64::from(n),
        };
        if len > WS_MAX_PAYLOAD {
            return ws_close(&mut io, 1009).await;
        }
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            0x0..=0x2 => ws_write(&mut io, fin_opcode, &payload).await?,
            0x8 => {
                // Echo the status code (and reason), then end the connection.
                ws_write(&mut io, 0x88, &payload).await?;
                let _ = io.shutdown().await;
                return Ok(());
            }
            0x9 => ws_write(&mut io, 0x8a, &payload).await?,
            0xa => {}
            _ => return ws_close(&mut io, 1002).await,
        }
    }
}

async fn ws_close<S: AsyncWrite + Unpin>(io: &mut S, code: u16) -> std::io::Result<()> {
    ws_write(io, 0x88, &code.to_be_bytes()).await?;
    let _ = io.shutdown().await;
    Ok(())
}

/// Writes one unmasked frame, as a server must.
async fn ws_write<S: AsyncWrite + Unpin>(
    io: &mut S,
    b0: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(b0);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    io.write_all(&frame).await?;
    io.flush().await
}
