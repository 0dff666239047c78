//! The compiled index behind [`Policy::evaluate_l4`](super::Policy): one
//! decision costs a few hash lookups however many rules there are.
//!
//! Exact hosts and IP literals are looked up by text; globs are grouped
//! by their fixed suffix (`example.com` for `*.api.example.com`), found by
//! walking the host's suffixes, then confirmed with the glob; endpoints
//! without a host (`allowed_ips` only) are checked by address.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use super::glob;
use super::schema::{Endpoint, Rule};
use super::{L4Allow, L4Decision, L4Request};

/// A rule and one of its endpoints, by position (rules sorted by key, so
/// a smaller `rule` is a lexicographically smaller key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EpRef {
    rule: u32,
    endpoint: u32,
}

/// An endpoint that matches the destination, and which candidate host
/// matched it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    at: EpRef,
    candidate: u32,
}

#[derive(Debug, Default)]
struct BinaryMatcher {
    /// The rule lists no binaries: any binary.
    any: bool,
    exact: Vec<Box<str>>,
    globs: Vec<Box<str>>,
}

impl BinaryMatcher {
    fn new(binaries: &[String]) -> Self {
        let (globs, exact) = binaries
            .iter()
            .map(|b| Box::<str>::from(b.as_str()))
            .partition(|b| b.contains('*'));
        Self {
            any: binaries.is_empty(),
            exact,
            globs,
        }
    }

    /// Exe or any ancestor, exactly or by glob (§2.3 item 10).
    fn allows(&self, binaries: &[Binary<'_>]) -> bool {
        self.any
            || binaries.iter().any(|b| {
                (b.exact && self.exact.iter().any(|e| **e == *b.text))
                    || self.globs.iter().any(|g| glob::path_matches(g, &b.text))
            })
    }
}

/// A request binary as text. Non-UTF-8 paths take part in glob matching
/// (lossily) but can never equal a policy path, which is UTF-8.
struct Binary<'a> {
    text: Cow<'a, str>,
    exact: bool,
}

fn binaries<'a>(paths: &[&'a Path]) -> Vec<Binary<'a>> {
    paths
        .iter()
        .map(|p| match p.to_str() {
            Some(s) => Binary {
                text: Cow::Borrowed(s),
                exact: true,
            },
            None => Binary {
                text: p.to_string_lossy(),
                exact: false,
            },
        })
        .collect()
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    exact: HashMap<Box<str>, Vec<EpRef>>,
    by_suffix: HashMap<Box<str>, Vec<EpRef>>,
    hostless: Vec<EpRef>,
    binaries: Vec<BinaryMatcher>,
}

/// Positions as u32 keep hits small; no policy holds 2^32 rules, but
/// saturate rather than wrap all the same.
fn idx(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl Index {
    pub fn build(rules: &[Rule]) -> Self {
        let mut index = Self::default();
        for (r, rule) in rules.iter().enumerate() {
            index.binaries.push(BinaryMatcher::new(&rule.binaries));
            for (e, ep) in rule.endpoints.iter().enumerate() {
                let at = EpRef {
                    rule: idx(r),
                    endpoint: idx(e),
                };
                let host = ep.summary.host_pattern.as_str();
                if host.is_empty() {
                    index.hostless.push(at);
                } else if host.contains('*') {
                    let suffix = glob::host_glob_fixed_suffix(host);
                    index.by_suffix.entry(suffix.into()).or_default().push(at);
                } else {
                    index.exact.entry(host.into()).or_default().push(at);
                }
            }
        }
        index
    }

    /// Endpoints matching the destination host and port, sorted by rule,
    /// endpoint, then candidate.
    fn hits(&self, rules: &[Rule], candidates: &[Cow<'_, str>], ip: IpAddr, port: u16) -> Vec<Hit> {
        let endpoint = |at: EpRef| -> Option<&Endpoint> {
            rules
                .get(at.rule as usize)?
                .endpoints
                .get(at.endpoint as usize)
        };
        let port_ok = |ep: &Endpoint| ep.summary.ports.binary_search(&port).is_ok();
        let mut hits = Vec::new();
        for (c, host) in candidates.iter().enumerate() {
            let candidate = idx(c);
            let host: &str = host;
            for &at in self.exact.get(host).into_iter().flatten() {
                if endpoint(at).is_some_and(port_ok) {
                    hits.push(Hit { at, candidate });
                }
            }
            // Every proper suffix that starts after a dot.
            let suffixes = host.match_indices('.').map(|(i, _)| &host[i + 1..]);
            for suffix in suffixes {
                for &at in self.by_suffix.get(suffix).into_iter().flatten() {
                    if endpoint(at).is_some_and(|ep| {
                        port_ok(ep) && glob::host_matches_normalized(&ep.summary.host_pattern, host)
                    }) {
                        hits.push(Hit { at, candidate });
                    }
                }
            }
        }
        // Hostless endpoints match by address; the IP is the last candidate.
        let ip_candidate = idx(candidates.len().saturating_sub(1));
        for &at in &self.hostless {
            if endpoint(at).is_some_and(|ep| {
                port_ok(ep) && ep.summary.allowed_ips.iter().any(|n| n.contains(&ip))
            }) {
                hits.push(Hit {
                    at,
                    candidate: ip_candidate,
                });
            }
        }
        hits.sort_unstable();
        hits.dedup();
        hits
    }

    pub fn evaluate(&self, rules: &[Rule], req: &L4Request<'_>) -> L4Decision {
        if rules.is_empty() {
            return L4Decision::Deny {
                reason: "network connections not allowed by policy".into(),
            };
        }
        let ip = req.ip.to_canonical();
        let candidates = candidates(req.hostnames, ip);
        let hits = self.hits(rules, &candidates, ip, req.port);
        if hits.is_empty() {
            let host = candidates.first().map_or("", |c| c);
            return L4Decision::Deny {
                reason: format!("endpoint {host}:{} is not allowed by any policy", req.port),
            };
        }
        let bins = binaries(req.binaries);
        let mut misses = Vec::new();
        // Hits are sorted by rule, so the first rule whose binaries match
        // is the lexicographically smallest matching key (rego's
        // `matched_policy`), and its first hit the first endpoint.
        for group in hits.chunk_by(|a, b| a.at.rule == b.at.rule) {
            let Some(&first) = group.first() else {
                continue;
            };
            let Some(rule) = rules.get(first.at.rule as usize) else {
                continue;
            };
            let matcher = self.binaries.get(first.at.rule as usize);
            if matcher.is_some_and(|m| m.allows(&bins)) {
                let endpoint = rule
                    .endpoints
                    .get(first.at.endpoint as usize)
                    .map(|e| e.summary.clone());
                let host = candidates
                    .get(first.candidate as usize)
                    .map(|c| c.to_string());
                if let (Some(endpoint), Some(host)) = (endpoint, host) {
                    return L4Decision::Allow(L4Allow {
                        rule: rule.key.clone(),
                        host,
                        endpoint,
                    });
                }
            }
            misses.push(binary_miss(req.binaries, &rule.key));
        }
        L4Decision::Deny {
            reason: misses.join("; "),
        }
    }

    /// Every endpoint matching host, port and binary, in rule-key then
    /// endpoint order; with the candidate host that matched it.
    pub fn matching<'p>(
        &self,
        rules: &'p [Rule],
        req: &L4Request<'_>,
    ) -> Vec<(&'p Rule, usize, &'p Endpoint, String)> {
        let ip = req.ip.to_canonical();
        let candidates = candidates(req.hostnames, ip);
        let bins = binaries(req.binaries);
        let mut out: Vec<(&Rule, usize, &Endpoint, String)> = Vec::new();
        let mut last: Option<EpRef> = None;
        for hit in self.hits(rules, &candidates, ip, req.port) {
            // Keep the first candidate per endpoint.
            if last == Some(hit.at) {
                continue;
            }
            last = Some(hit.at);
            let r = hit.at.rule as usize;
            let e = hit.at.endpoint as usize;
            if !self.binaries.get(r).is_some_and(|m| m.allows(&bins)) {
                continue;
            }
            if let (Some(rule), Some(host)) = (rules.get(r), candidates.get(hit.candidate as usize))
                && let Some(ep) = rule.endpoints.get(e)
            {
                out.push((rule, e, ep, host.to_string()));
            }
        }
        out
    }
}

/// The names the workload used, lowercased without a trailing dot (IP
/// texts in canonical form), then the destination IP itself.
fn candidates(hostnames: &[String], ip: IpAddr) -> Vec<Cow<'_, str>> {
    let mut out = Vec::with_capacity(hostnames.len() + 1);
    for name in hostnames {
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            continue;
        }
        if let Ok(literal) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            out.push(Cow::Owned(literal.to_canonical().to_string()));
        } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
            out.push(Cow::Owned(name.to_ascii_lowercase()));
        } else {
            out.push(Cow::Borrowed(name));
        }
    }
    out.push(Cow::Owned(ip.to_string()));
    out
}

/// The rego deny text for a rule whose endpoint matched but binary did not.
fn binary_miss(binaries: &[&Path], key: &str) -> String {
    let exe = binaries
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let ancestors: Vec<String> = binaries
        .iter()
        .skip(1)
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "binary '{exe}' not allowed in policy '{key}' (ancestors: [{}])",
        ancestors.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn candidates_are_normalised_and_end_with_the_ip() {
        let names = vec![
            "API.Example.com.".to_string(),
            String::new(),
            "plain.example".to_string(),
            "[2001:DB8::1]".to_string(),
        ];
        let c = candidates(&names, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let c: Vec<&str> = c.iter().map(|c| c.as_ref()).collect();
        assert_eq!(
            c,
            [
                "api.example.com",
                "plain.example",
                "2001:db8::1",
                "192.0.2.1"
            ]
        );
    }

    #[test]
    fn binary_matcher_checks_exe_and_ancestors() {
        let m = BinaryMatcher::new(&["/usr/bin/curl".into(), "/opt/*/bin/node".into()]);
        let b = |ps: &[&'static str]| {
            let paths: Vec<&Path> = ps.iter().map(Path::new).collect();
            m.allows(&binaries(&paths))
        };
        assert!(b(&["/usr/bin/curl"]));
        assert!(b(&["/bin/sh", "/usr/bin/curl"]));
        assert!(b(&["/opt/v20/bin/node"]));
        assert!(!b(&["/opt/a/b/bin/node"]));
        assert!(!b(&["/usr/bin/curl2"]));
        assert!(!b(&[]));
        assert!(BinaryMatcher::new(&[]).allows(&[]));
    }

    #[test]
    fn non_utf8_binaries_never_equal_a_policy_path() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(OsStr::from_bytes(b"/usr/bin/\xffcurl"));
        let m = BinaryMatcher::new(&["/usr/bin/\u{fffd}curl".into()]);
        assert!(!m.allows(&binaries(&[odd])));
        let any = BinaryMatcher::new(&["/usr/bin/*".into()]);
        assert!(any.allows(&binaries(&[odd])));
    }

    #[test]
    fn deny_text_lists_ancestors() {
        let paths = [
            Path::new("/usr/bin/wget"),
            Path::new("/bin/bash"),
            Path::new("/sbin/init"),
        ];
        assert_eq!(
            binary_miss(&paths, "k"),
            "binary '/usr/bin/wget' not allowed in policy 'k' (ancestors: [/bin/bash, /sbin/init])"
        );
        assert_eq!(
            binary_miss(&[], "k"),
            "binary '' not allowed in policy 'k' (ancestors: [])"
        );
    }
}
