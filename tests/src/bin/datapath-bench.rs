//! `cargo xtask bench`: the cost of transparent capture, measured against
//! the direct path in the same run.
//!
//! One binary, three roles:
//! - `serve PORT`: the upstream, run inside a test network namespace;
//! - `client ADDR MODE ...`: the workload, run directly or in a sandbox;
//! - no arguments: the driver, which sets everything up and reports.
//!
//! Modes: `bulk BYTES` (one connection, upload then download), `connect N`
//! (N connections, each a 1-byte round trip), `rr N` (N 1-byte round trips
//! on one connection).

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use portcullis_e2e::{Agent, Upstream, stderr, stdout};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(args[1].parse().expect("port")),
        Some("client") => client(&args[1], &args[2], args[3].parse().expect("count")),
        _ => drive(),
    }
}

fn serve(port: u16) {
    let listener = TcpListener::bind(("::", port)).expect("bind");
    println!("ready");
    std::io::stdout().flush().unwrap();
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || handle(conn));
    }
}

/// Echoes everything back until the client closes.
fn handle(mut conn: TcpStream) {
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

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s
}

fn client(addr: &str, mode: &str, count: u64) {
    let started = Instant::now();
    let mut latencies = Vec::new();
    match mode {
        "bulk" => {
            let s = connect(addr);
            let mut reader = s.try_clone().unwrap();
            let total = count;
            let echo = std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                while got < total {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n as u64,
                    }
                }
                got
            });
            let chunk = vec![7u8; 256 * 1024];
            let mut sent = 0u64;
            let mut w = s;
            while sent < count {
                let n = chunk.len().min((count - sent) as usize);
                w.write_all(&chunk[..n]).unwrap();
                sent += n as u64;
            }
            let got = echo.join().unwrap();
            w.shutdown(Shutdown::Both).ok();
            assert_eq!(got, count, "echoed bytes");
        }
        "connect" => {
            for _ in 0..count {
                let t = Instant::now();
                let mut s = connect(addr);
                s.write_all(b"x").unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                latencies.push(t.elapsed());
            }
        }
        "rr" => {
            let mut s = connect(addr);
            let mut b = [0u8; 1];
            for _ in 0..count {
                let t = Instant::now();
                s.write_all(b"x").unwrap();
                s.read_exact(&mut b).unwrap();
                latencies.push(t.elapsed());
            }
        }
        other => panic!("unknown mode {other}"),
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    println!(
        "{{\"seconds\":{secs},\"count\":{count},\"p50_us\":{},\"p99_us\":{}}}",
        pct(0.50),
        pct(0.99)
    );
}

struct Sample {
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse(out: &str) -> Sample {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad output {out:?}: {e}"));
    Sample {
        seconds: v["seconds"].as_f64().unwrap(),
        p50_us: v["p50_us"].as_f64().unwrap(),
        p99_us: v["p99_us"].as_f64().unwrap(),
    }
}

fn drive() {
    let me = std::env::current_exe().unwrap();
    let mut up = Upstream::create(60);
    up.spawn(&[me.to_str().unwrap(), "serve", "9000"]);
    let policy = format!(
        "version: 1\nnetwork_policies:\n  bench:\n    endpoints:\n      - host: \"{}\"\n        port: 9000\n    binaries:\n      - path: \"{}\"\n",
        up.ip4,
        me.display()
    );
    // One agent per relay implementation, measured in the same run.
    let agents: Vec<(&str, Agent)> = [("copy", 60u16), ("splice", 61)]
        .into_iter()
        .map(|(mode, index)| {
            let agent = Agent::start_with(
                &format!("bench-{mode}"),
                index,
                &[],
                &format!("relay: {mode}\n"),
            );
            let path = agent.write_policy("bench.yaml", &policy);
            agent.ok(&[
                "sandbox",
                "create",
                "bench",
                "--policy",
                path.to_str().unwrap(),
            ]);
            (mode, agent)
        })
        .collect();
    let addr = format!("{}:9000", up.ip4);
    let runs: [(&str, u64); 3] = [
        ("bulk", 1024 * 1024 * 1024),
        ("connect", 2000),
        ("rr", 20000),
    ];
    println!(
        "datapath bench: echo upstream at {addr} (netns {}), client direct vs in a sandbox",
        up.netns
    );
    println!(
        "{:<8} {:<8} {:>12} {:>8} {:>10} {:>10}",
        "mode", "path", "rate", "ratio", "p50", "p99"
    );
    for (mode, count) in runs {
        let count_s = count.to_string();
        let direct = Command::new(&me)
            .args(["client", &addr, mode, &count_s])
            .output()
            .unwrap();
        assert!(
            direct.status.success(),
            "direct {mode}: {}",
            stderr(&direct)
        );
        let d = parse(&stdout(&direct));
        let rate = |s: &Sample| match mode {
            "bulk" => format!("{:.0} MB/s", count as f64 / s.seconds / 1e6),
            _ => format!("{:.0} /s", count as f64 / s.seconds),
        };
        let latency = |s: &Sample| match mode {
            "bulk" => ("-".to_string(), "-".to_string()),
            _ => (format!("{:.1}us", s.p50_us), format!("{:.1}us", s.p99_us)),
        };
        let (p50, p99) = latency(&d);
        println!(
            "{mode:<8} {:<8} {:>12} {:>8} {p50:>10} {p99:>10}",
            "direct",
            rate(&d),
            "1.000"
        );
        for (relay, agent) in &agents {
            let out = agent.run_in(
                "bench",
                &[me.to_str().unwrap(), "client", &addr, mode, &count_s],
            );
            assert!(out.status.success(), "{relay} {mode}: {}", stderr(&out));
            let s = parse(&stdout(&out));
            let (p50, p99) = latency(&s);
            println!(
                "{mode:<8} {relay:<8} {:>12} {:>8.3} {p50:>10} {p99:>10}",
                rate(&s),
                d.seconds / s.seconds
            );
        }
    }
    println!(
        "ratio = direct time / sandboxed time for the same work (1.0 = no cost), measured in this run"
    );
    drop(agents);
    drop(up);
}
