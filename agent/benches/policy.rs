//! Policy engine benchmarks: L4 decisions against a 10,000-rule policy
//! (exact hosts, wildcard hosts, IP literals, several binaries per rule),
//! and parsing that policy.
//!
//! Run: `cargo bench -p portcullis-agent --bench policy`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_agent::policy::{L4Decision, L4Request, Policy};

const RULES: usize = 10_000;

/// Rule `i` has host `svc{i}.example.com` (i % 3 == 0), `*.t{i}.example.net`
/// (i % 3 == 1) or the IP literal `10.x.y.z` encoding `i` (i % 3 == 2), and
/// binaries `/usr/bin/tool{i}`, `/opt/app{i % 50}/bin/*` and a helper.
fn policy_yaml() -> String {
    let mut y = String::from("version: 1\nnetwork_policies:\n");
    for i in 0..RULES {
        let host = match i % 3 {
            0 => format!("svc{i}.example.com"),
            1 => format!("\"*.t{i}.example.net\""),
            _ => format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        };
        y.push_str(&format!(
            "  rule_{i:05}:\n    endpoints:\n      - host: {host}\n        ports: [443, {}]\n",
            8000 + i % 100
        ));
        y.push_str(&format!(
            "    binaries:\n      - path: /usr/bin/tool{i}\n      - path: /opt/app{}/bin/*\n      - path: /usr/local/bin/helper\n",
            i % 50
        ));
    }
    y
}

fn decide(policy: &Policy, hostnames: &[String], ip: IpAddr, binaries: &[&Path]) -> L4Decision {
    policy.evaluate_l4(&L4Request {
        hostnames,
        ip,
        port: 443,
        binaries,
    })
}

fn benches(c: &mut Criterion) {
    let yaml = policy_yaml();
    let policy = match Policy::parse_with_limit("bench.yaml", &yaml, usize::MAX) {
        Ok(p) => p,
        Err(e) => panic!("bench policy does not load: {e}"),
    };
    let public: IpAddr = [93, 184, 216, 34].into();
    let names = |n: &str| vec![n.to_string()];

    let exact = names("svc3000.example.com");
    let exact_bin = [Path::new("/usr/bin/tool3000")];
    assert!(matches!(
        decide(&policy, &exact, public, &exact_bin),
        L4Decision::Allow(_)
    ));
    c.bench_function("evaluate_l4/allow_exact_host", |b| {
        b.iter(|| decide(&policy, black_box(&exact), public, black_box(&exact_bin)))
    });

    let wild = names("api.t7000.example.net");
    let wild_bins = [Path::new("/bin/sh"), Path::new("/opt/app0/bin/run")];
    assert!(matches!(
        decide(&policy, &wild, public, &wild_bins),
        L4Decision::Allow(_)
    ));
    c.bench_function("evaluate_l4/allow_wildcard_host", |b| {
        b.iter(|| decide(&policy, black_box(&wild), public, black_box(&wild_bins)))
    });

    let ip_literal: IpAddr = [10, 0, 39, 14].into(); // rule 9998
    let ip_bin = [Path::new("/usr/bin/tool9998")];
    assert!(matches!(
        decide(&policy, &[], ip_literal, &ip_bin),
        L4Decision::Allow(_)
    ));
    c.bench_function("evaluate_l4/allow_ip_literal", |b| {
        b.iter(|| decide(&policy, &[], black_box(ip_literal), black_box(&ip_bin)))
    });

    let denied_bins = [Path::new("/usr/bin/wget"), Path::new("/bin/bash")];
    assert!(matches!(
        decide(&policy, &exact, public, &denied_bins),
        L4Decision::Deny { .. }
    ));
    c.bench_function("evaluate_l4/deny_binary", |b| {
        b.iter(|| decide(&policy, black_box(&exact), public, black_box(&denied_bins)))
    });

    let unknown = names("unknown.example.org");
    assert!(matches!(
        decide(&policy, &unknown, public, &exact_bin),
        L4Decision::Deny { .. }
    ));
    c.bench_function("evaluate_l4/deny_unknown_host", |b| {
        b.iter(|| decide(&policy, black_box(&unknown), public, black_box(&exact_bin)))
    });

    let mut group = c.benchmark_group("parse");
    group.sample_size(10);
    group.bench_function("10000_rules", |b| {
        b.iter(|| Policy::parse_with_limit("bench.yaml", black_box(&yaml), usize::MAX))
    });
    group.finish();
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
