//! The workload side of the benchmark: the processes that run directly or
//! inside the sandbox and print one JSON line of results.
//!
//! - `serve PORT`: a TCP echo server (run in the upstream's namespace);
//! - `bulk ADDR BYTES`: one connection, BYTES uploaded and echoed back;
//! - `newconn ADDR HOST N`: N times connect, one HTTP/1.1 GET, close;
//! - `idle ADDR HOST N`: N keep-alive connections, one GET each, then
//!   hold them open until stdin closes;
//! - `first-tls PORT CA HOST...`: per host, a fresh TLS connection (no
//!   resumption) and one GET; prints each request's latency. CA `-` uses
//!   `SSL_CERT_FILE`, which `portcullis run` points at the sandbox bundle.

use std::{
    io::{BufRead, Read, Write},
    net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

pub fn serve(port: u16) {
    let listener = TcpListener::bind(("::", port)).expect("bind");
    println!("ready");
    std::io::stdout().flush().unwrap();
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || echo(conn));
    }
}

/// Echoes everything back until the client closes.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn resolve(addr: &str) -> String {
    addr.to_socket_addrs()
        .unwrap_or_else(|e| panic!("resolve {addr}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{addr} has no address"))
        .to_string()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s
}

/// One line of results: elapsed seconds, the count of operations and the
/// latency percentiles of the timed operations (empty for bulk).
fn report(started: Instant, count: u64, mut latencies: Vec<Duration>) {
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let micros: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "count": count,
            "p50_us": percentile(&micros, 0.50),
            "p99_us": percentile(&micros, 0.99),
        })
    );
}

/// The nearest-rank percentile of sorted samples; 0 when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn bulk(addr: &str, bytes: u64) {
    let started = Instant::now();
    let s = connect(addr);
    let mut reader = s.try_clone().unwrap();
    let echoed = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        got
    });
    let chunk = vec![7u8; 256 * 1024];
    let mut sent = 0u64;
    let mut writer = s;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        writer.write_all(&chunk[..n]).unwrap();
        sent += n as u64;
    }
    let got = echoed.join().unwrap();
    writer.shutdown(Shutdown::Both).ok();
    assert_eq!(got, bytes, "echoed bytes");
    report(started, bytes, Vec::new());
}

/// Sends one GET and reads the whole response (Content-Length framed, as
/// the fixture upstream answers). Returns the status code.
fn get(conn: &mut (impl Read + Write), host: &str, close: bool) -> u16 {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        conn,
        "GET /bench HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n"
    )
    .unwrap();
    conn.flush().unwrap();
    read_response(conn)
}

fn read_response(conn: &mut impl Read) -> u16 {
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "response ended early ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).unwrap();
    status
}

pub fn newconn(addr: &str, host: &str, count: u64) {
    // Resolved once: the scenario measures connections, not DNS (the
    // direct path has no resolver for the bench names).
    let addr = resolve(addr);
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t = Instant::now();
        let mut s = connect(&addr);
        let status = get(&mut s, host, true);
        assert_eq!(status, 200, "GET through {addr}");
        latencies.push(t.elapsed());
    }
    report(started, count, latencies);
}

pub fn idle(addr: &str, host: &str, count: u64) {
    let started = Instant::now();
    let mut held = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut s = connect(addr);
        let status = get(&mut s, host, false);
        assert_eq!(status, 200, "GET {i} through {addr}");
        held.push(s);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    // Hold every connection until the driver has measured, then close.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(held);
    report(started, count, Vec::new());
}

pub fn first_tls(port: u16, ca: &str, hosts: &[String]) {
    let ca_file = if ca == "-" {
        std::env::var("SSL_CERT_FILE").expect("SSL_CERT_FILE (set by portcullis run)")
    } else {
        ca.to_string()
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_file).expect("CA file") {
        roots.add(cert.expect("CA certificate")).ok();
    }
    let roots = Arc::new(roots);
    let started = Instant::now();
    let mut latencies = Vec::new();
    for spec in hosts {
        // `name=ip` connects to ip with SNI `name` (the direct path has no
        // DNS for the bench names); a bare name is resolved first.
        let (name, target) = spec.split_once('=').unwrap_or((spec, spec));
        let addr = (target, port)
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolve {target}: {e}"))
            .next()
            .expect("an address");
        // A fresh config per connection: no session to resume, so every
        // request pays a full handshake on both paths.
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        let t = Instant::now();
        let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_nodelay(true).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let status = get(&mut tls, name, true);
        assert_eq!(status, 200, "GET https://{name}:{port}");
        latencies.push(t.elapsed());
    }
    report(started, hosts.len() as u64, latencies);
}
