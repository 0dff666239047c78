//! Policy decision micro-benchmarks (the benchmark issue: one L4 and one L7
//! decision, with 10 and with 10,000 rules; target <= 2 µs p50 at 10,000).
//!
//! - `l4_decision/{10,10000}`: one [`Policy::evaluate_l4`] for an allowed
//!   connection (exe plus ancestors) matching a rule near the end of the
//!   policy.
//! - `l7_decision/{10,10000}`: one request as the proxy decides it:
//!   [`Policy::matching_endpoints`], then [`canonicalize`] of the request
//!   target, then [`decide`] — `GET /repos/o/r/contents/docs/readme.md?ref=main`
//!   allowed by a `rest` rule `allow GET /repos/*/*/contents/**` of the last
//!   rule of the policy.
//! - `l4_decision_deny/{binary,unknown_host}` (10,000 rules): the deny paths.
//! - `parse/10000_rules`: parsing and compiling the 10,000-rule policy.
//!
//! Both policy sizes come from one generator (see [`policy_yaml`]). Every
//! benchmarked request is checked for its expected outcome first, so a
//! benchmark cannot silently measure a deny path.
//!
//! Run: `cargo bench -p portcullis-agent --bench policy`. Results land in
//! `target/criterion/<group>/<parameter>/new/estimates.json`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_agent::policy::{L4Decision, L4Request, Policy};
use portcullis_agent::proxy::http::canonical::canonicalize;
use portcullis_agent::proxy::http::decide::{L7Outcome, allow_encoded_slash, decide};

/// The policy sizes of the issue.
const SIZES: [usize; 2] = [10, 10_000];

/// The benchmarked L7 request.
const L7_METHOD: &str = "GET";
const L7_TARGET: &str = "/repos/o/r/contents/docs/readme.md?ref=main";

/// A public address: the destination IP the proxy sees for a named host.
const PUBLIC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(93, 184, 216, 34));

#[derive(Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// `svc{i}.example.com`
    Exact,
    /// `*.t{i}.example.net`
    Wildcard,
    /// `10.x.y.z` encoding `i`
    IpLiteral,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum L7Kind {
    /// Plain L4 endpoint.
    None,
    /// `protocol: rest` with explicit allow and deny rules.
    RestRules,
    /// `protocol: rest` with an `access` preset.
    RestPreset,
}

fn host_kind(i: usize) -> HostKind {
    match i % 3 {
        0 => HostKind::Exact,
        1 => HostKind::Wildcard,
        _ => HostKind::IpLiteral,
    }
}

/// A third of the rules are L7 (blocks of three consecutive rules, so
/// every host kind gets some), half of those with explicit rules.
fn l7_kind(i: usize) -> L7Kind {
    if !(i / 3).is_multiple_of(3) {
        L7Kind::None
    } else if i % 2 == 1 {
        L7Kind::RestRules
    } else {
        L7Kind::RestPreset
    }
}

fn exact_host(i: usize) -> String {
    format!("svc{i}.example.com")
}

fn ip_literal(i: usize) -> [u8; 4] {
    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// `rules` rules keyed `rule_{i:05}` (so key order is index order). Rule
/// `i` has host [`host_kind`], ports 443 and `8000 + i % 100`, binaries
/// `/usr/bin/tool{i}`, `/opt/app{i % 50}/bin/*` and a shared helper, and
/// L7 config per [`l7_kind`].
fn policy_yaml(rules: usize) -> String {
    let mut y = String::from("version: 1\nnetwork_policies:\n");
    for i in 0..rules {
        let host = match host_kind(i) {
            HostKind::Exact => exact_host(i),
            HostKind::Wildcard => format!("\"*.t{i}.example.net\""),
            HostKind::IpLiteral => {
                let [a, b, c, d] = ip_literal(i);
                format!("{a}.{b}.{c}.{d}")
            }
        };
        y.push_str(&format!(
            "  rule_{i:05}:\n    endpoints:\n      - host: {host}\n        ports: [443, {}]\n",
            8000 + i % 100
        ));
        match l7_kind(i) {
            L7Kind::None => {}
            L7Kind::RestRules => y.push_str(&format!(
                r#"        protocol: rest
        rules:
          - allow:
              method: POST
              path: "/api/v{}/items"
              query: {{ dry_run: "true" }}
          - allow: {{ method: PUT, path: "/repos/*/*/contents/**" }}
          - allow: {{ method: GET, path: "/repos/*/*/contents/**" }}
        deny_rules:
          - {{ method: "*", path: "/repos/*/*/actions/**" }}
          - {{ method: GET, path: "/repos/*/*/search", query: {{ scope: "admin*" }} }}
"#,
                i % 5
            )),
            L7Kind::RestPreset => y.push_str(&format!(
                "        protocol: rest\n        access: {}\n",
                if i % 4 == 0 {
                    "read-only"
                } else {
                    "read-write"
                }
            )),
        }
        y.push_str(&format!(
            "    binaries:\n      - path: /usr/bin/tool{i}\n      - path: /opt/app{}/bin/*\n      - path: /usr/local/bin/helper\n",
            i % 50
        ));
    }
    y
}

fn parse(yaml: &str) -> Policy {
    match Policy::parse_with_limit("bench.yaml", yaml, usize::MAX) {
        Ok(p) => p,
        Err(e) => panic!("bench policy does not load: {e}"),
    }
}

/// The last rule below `rules` that satisfies `pred`.
fn last_rule(rules: usize, pred: impl Fn(usize) -> bool) -> usize {
    match (0..rules).rev().find(|&i| pred(i)) {
        Some(i) => i,
        None => panic!("no suitable rule among {rules}"),
    }
}

/// One policy size with its benchmarked requests.
struct Fixture {
    rules: usize,
    policy: Policy,
    /// L4: exact host of a plain L4 rule near the end.
    l4_host: Vec<String>,
    l4_exe: PathBuf,
    /// L7: exact host of a `rest` rule with explicit rules, near the end.
    l7_host: Vec<String>,
    l7_exe: PathBuf,
    l7_rule: String,
}

/// The exe, then its ancestors (a shell and init), as the proxy passes them.
fn with_ancestors(exe: &Path) -> [&Path; 3] {
    [exe, Path::new("/bin/sh"), Path::new("/sbin/init")]
}

impl Fixture {
    fn new(rules: usize) -> Self {
        let policy = parse(&policy_yaml(rules));
        assert_eq!(policy.rule_count(), rules);
        let l4 = last_rule(rules, |i| {
            host_kind(i) == HostKind::Exact && l7_kind(i) == L7Kind::None
        });
        let l7 = last_rule(rules, |i| {
            host_kind(i) == HostKind::Exact && l7_kind(i) == L7Kind::RestRules
        });
        assert!(
            l4 > 0 && l7 > 0,
            "the benchmarked rules must not be the first"
        );
        let f = Self {
            rules,
            policy,
            l4_host: vec![exact_host(l4)],
            l4_exe: PathBuf::from(format!("/usr/bin/tool{l4}")),
            l7_host: vec![exact_host(l7)],
            l7_exe: PathBuf::from(format!("/usr/bin/tool{l7}")),
            l7_rule: format!("rule_{l7:05}"),
        };
        match f.l4() {
            L4Decision::Allow(a) => assert_eq!(a.rule, format!("rule_{l4:05}")),
            other => panic!("{rules} rules: L4 request not allowed: {other:?}"),
        }
        assert_eq!(
            f.l7(),
            L7Outcome::Allow {
                rule: f.l7_rule.clone()
            },
            "{rules} rules: L7 request not allowed"
        );
        f
    }

    fn l4(&self) -> L4Decision {
        self.policy.evaluate_l4(&L4Request {
            hostnames: black_box(&self.l4_host),
            ip: black_box(PUBLIC),
            port: 443,
            binaries: black_box(&with_ancestors(&self.l4_exe)),
        })
    }

    /// One request as the proxy decides it.
    fn l7(&self) -> L7Outcome {
        let matches = self.policy.matching_endpoints(&L4Request {
            hostnames: black_box(&self.l7_host),
            ip: black_box(PUBLIC),
            port: 443,
            binaries: black_box(&with_ancestors(&self.l7_exe)),
        });
        let target = match canonicalize(black_box(L7_TARGET), allow_encoded_slash(&matches)) {
            Ok(t) => t,
            Err(e) => panic!("{L7_TARGET}: {e}"),
        };
        decide(&matches, black_box(L7_METHOD), &target.path, &target.params)
    }
}

fn configure<M: criterion::measurement::Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
}

fn benches(c: &mut Criterion) {
    let fixtures: Vec<Fixture> = SIZES.iter().map(|&n| Fixture::new(n)).collect();

    let mut g = c.benchmark_group("l4_decision");
    configure(&mut g);
    for f in &fixtures {
        g.bench_with_input(BenchmarkId::from_parameter(f.rules), f, |b, f| {
            b.iter(|| f.l4())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("l7_decision");
    configure(&mut g);
    for f in &fixtures {
        g.bench_with_input(BenchmarkId::from_parameter(f.rules), f, |b, f| {
            b.iter(|| f.l7())
        });
    }
    g.finish();

    // Deny paths at 10,000 rules: a binary no rule lists, a host no rule has.
    let big = &fixtures[fixtures.len() - 1];
    let deny = |hostnames: &[String], binaries: &[&Path]| {
        big.policy.evaluate_l4(&L4Request {
            hostnames: black_box(hostnames),
            ip: black_box(PUBLIC),
            port: 443,
            binaries: black_box(binaries),
        })
    };
    let denied_bins = [Path::new("/usr/bin/wget"), Path::new("/bin/bash")];
    let unknown = vec!["unknown.example.org".to_string()];
    assert!(matches!(
        deny(&big.l4_host, &denied_bins),
        L4Decision::Deny { .. }
    ));
    assert!(matches!(
        deny(&unknown, &with_ancestors(&big.l4_exe)),
        L4Decision::Deny { .. }
    ));
    let mut g = c.benchmark_group("l4_decision_deny");
    configure(&mut g);
    g.bench_function("binary", |b| b.iter(|| deny(&big.l4_host, &denied_bins)));
    let known_bins = with_ancestors(&big.l4_exe);
    g.bench_function("unknown_host", |b| b.iter(|| deny(&unknown, &known_bins)));
    g.finish();

    let yaml = policy_yaml(10_000);
    let mut g = c.benchmark_group("parse");
    configure(&mut g);
    g.sample_size(10);
    g.bench_function("10000_rules", |b| {
        b.iter(|| Policy::parse_with_limit("bench.yaml", black_box(&yaml), usize::MAX))
    });
    g.finish();
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
