//! Credential placeholder resolution on a request head built from the
//! input: byte 0 picks TLS/host/port, the rest splits on `\n` into method,
//! target, then header name/value pairs. Invariants: a marker never leaves
//! (not after a rewrite, and `Ok(None)` only for a head without one); a
//! rewrite only happens over TLS, for a bound credential, and keeps the
//! headers' names and order.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_agent::providers::placeholder::{
    Binding, Credential, PREFIX, RequestHead, Secret, resolve,
};

const HOSTS: [&str; 4] = [
    "api.github.com",
    "uploads.github.com",
    "example.com",
    "10.0.0.5",
];
const PORTS: [u16; 2] = [443, 8443];

fn credential(
    key: &str,
    secret: &str,
    host: &str,
    ports: &[u16],
    path: Option<&str>,
) -> Credential {
    Credential {
        key: key.into(),
        provider: format!("{}-provider", key.to_ascii_lowercase()),
        secret: Secret::new(secret),
        bindings: vec![Binding {
            host: host.into(),
            ports: ports.to_vec(),
            path: path.map(String::from),
        }],
    }
}

static CREDENTIALS: LazyLock<Vec<Credential>> = LazyLock::new(|| {
    vec![
        credential(
            "GITHUB_TOKEN",
            "ghp_S3cretValue42",
            "api.github.com",
            &[443],
            Some("/repos/**"),
        ),
        credential(
            "API_KEY",
            "k3y with spaces/&?=#%41",
            "*.github.com",
            &[],
            None,
        ),
        credential(
            "BAD_SECRET",
            "line1\r\nInjected: x",
            "api.github.com",
            &[],
            None,
        ),
        // A secret that is itself a placeholder must not sneak one through.
        credential(
            "LOOP",
            "openshell:resolve:env:GITHUB_TOKEN",
            "api.github.com",
            &[],
            None,
        ),
        // Reserved (revision-scoped) key: never resolvable.
        credential("v1_TOKEN", "reserved", "api.github.com", &[], None),
    ]
});

fn has_marker(text: &[u8]) -> bool {
    text.windows(PREFIX.len())
        .any(|w| w.eq_ignore_ascii_case(PREFIX.as_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|&b| b == b'\n');
    let method = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let target = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let mut headers = Vec::new();
    while let Some(name) = fields.next() {
        let value = fields.next().unwrap_or_default();
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let head = RequestHead {
        scheme_is_tls: flags & 1 != 0,
        method: &method,
        host: HOSTS[usize::from(flags >> 1) % HOSTS.len()],
        port: PORTS[usize::from(flags >> 3) % PORTS.len()],
        path: target.split('?').next().unwrap_or_default(),
        target: &target,
        headers: &headers,
    };
    match resolve(&head, &CREDENTIALS) {
        Ok(Some(rewritten)) => {
            assert!(head.scheme_is_tls, "resolved over plain HTTP");
            assert!(!method.eq_ignore_ascii_case("TRACE") && !method.eq_ignore_ascii_case("TRACK"));
            assert!(
                !has_marker(rewritten.target.as_bytes()),
                "marker left in the target"
            );
            let names: Vec<&String> = rewritten.headers.iter().map(|(n, _)| n).collect();
            assert_eq!(names, headers.iter().map(|(n, _)| n).collect::<Vec<_>>());
            for (name, value) in &rewritten.headers {
                assert!(
                    !has_marker(name.as_bytes()) && !has_marker(value),
                    "marker left in header {name:?}"
                );
            }
            for key in &rewritten.resolved {
                let c = CREDENTIALS
                    .iter()
                    .find(|c| &c.key == key)
                    .expect("resolved a known key");
                assert!(
                    c.bindings
                        .iter()
                        .any(|b| b.admits(head.host, head.port, head.path)),
                    "{key} unbound"
                );
            }
        }
        // Nothing to resolve: the head goes upstream as is, so it must hold no marker.
        Ok(None) => {
            assert!(
                !has_marker(target.as_bytes()),
                "Ok(None) with a marker in the target"
            );
            for (name, value) in &headers {
                assert!(
                    !has_marker(name.as_bytes()) && !has_marker(value),
                    "Ok(None) with a marker in {name:?}"
                );
            }
        }
        Err(_) => {}
    }
});
