//! The glob semantics of OpenShell's runtime (reference §1.5), which differ
//! from its docs; the runtime wins.
//!
//! Every matcher here runs in O(pattern × text) time: patterns come from
//! policy (which agents may propose) and texts from the workload, so a
//! backtracking matcher would be a denial-of-service lever.

/// Host glob, `.` as delimiter, case-insensitive. `*` matches within one
/// label (a whole label or part of one); `**` only as the whole first label,
/// matching one or more labels. A trailing dot on the host is ignored.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host_matches_normalized(&pattern, &host)
}

/// [`host_matches`] for a pattern and host that are already lowercase and
/// carry no trailing dot. Allocation-free: this is the snapshot's hot path.
pub fn host_matches_normalized(pattern: &str, host: &str) -> bool {
    if pattern == "**" {
        return true;
    }
    if let Some(rest) = pattern.strip_prefix("**.") {
        let need = rest.split('.').count();
        let have = host.split('.').count();
        if have <= need {
            return false;
        }
        // `**` takes the leading `have - need` labels (at least one).
        let Some(tail) = host.splitn(have - need + 1, '.').last() else {
            return false;
        };
        return labels_match(rest, tail);
    }
    pattern.split('.').count() == host.split('.').count() && labels_match(pattern, host)
}

/// Label-by-label match of two dot-separated names with equal label counts.
fn labels_match(pattern: &str, host: &str) -> bool {
    pattern
        .split('.')
        .zip(host.split('.'))
        .all(|(p, h)| segment_matches(p.as_bytes(), h.as_bytes()))
}

/// `*` within one segment: matches any run of bytes of that segment.
pub fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    // Classic greedy matcher: remember the last `*` and retry from one
    // byte further on a mismatch. Correct because a later `*` can absorb
    // anything an earlier one could have.
    let (mut p, mut t) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                retry = Some((p, t));
            }
            Some(&pc) if pc == c => {
                p += 1;
                t += 1;
            }
            _ => match retry {
                Some((rp, rt)) => {
                    p = rp;
                    t = rt + 1;
                    retry = Some((rp, rt + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Binary (and REST path) glob, `/` as delimiter: `*` stays within a
/// segment, `**` as a whole segment crosses any number (one or more) of
/// segments.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "**" {
        return true;
    }
    // `**` is "one segment, then zero or more": the single-element step
    // keeps the greedy algorithm of `segment_matches` valid at this level.
    let mut tokens: Vec<PathToken<'_>> = Vec::new();
    for seg in pattern.split('/') {
        if seg == "**" {
            tokens.push(PathToken::AnyOne);
            tokens.push(PathToken::AnyRun);
        } else {
            tokens.push(PathToken::Seg(seg));
        }
    }
    let segs: Vec<&str> = path.split('/').collect();
    let one = |tok: &PathToken<'_>, seg: &str| match tok {
        PathToken::AnyOne => true,
        PathToken::Seg(p) => segment_matches(p.as_bytes(), seg.as_bytes()),
        PathToken::AnyRun => false,
    };
    let (mut p, mut s) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while let Some(seg) = segs.get(s) {
        match tokens.get(p) {
            Some(PathToken::AnyRun) => {
                p += 1;
                retry = Some((p, s));
            }
            Some(tok) if one(tok, seg) => {
                p += 1;
                s += 1;
            }
            _ => match retry {
                Some((rp, rs)) => {
                    p = rp;
                    s = rs + 1;
                    retry = Some((rp, rs + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p.min(tokens.len())..]
        .iter()
        .all(|t| matches!(t, PathToken::AnyRun))
}

enum PathToken<'a> {
    Seg(&'a str),
    AnyOne,
    AnyRun,
}

/// Why a host glob cannot be loaded, if it cannot.
pub fn host_glob_error(pattern: &str) -> Option<String> {
    if !pattern.contains('*') {
        return None;
    }
    let labels: Vec<&str> = pattern.split('.').collect();
    if pattern == "*" || pattern == "**" {
        return Some(
            "a bare wildcard would allow every host; name the domain, e.g. `*.example.com`".into(),
        );
    }
    if labels.len() <= 2 {
        return Some(format!(
            "`{pattern}` is a TLD wildcard; wildcards need at least two fixed labels, e.g. `*.example.com`"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if label.contains("**") && (i != 0 || *label != "**") {
            return Some(
                "`**` is only allowed as the whole first label, e.g. `**.example.com`".into(),
            );
        }
        if i > 0 && label.contains('*') && *label != "*" {
            return Some(format!(
                "label `{label}` mixes `*` with text; only the first label may be partial, e.g. `api-*.example.com`"
            ));
        }
    }
    if labels.last().is_some_and(|l| l.contains('*')) {
        return Some("the top-level domain cannot be a wildcard".into());
    }
    // Stricter than OpenShell: `*.*.com` or `api.*.com` reach every domain
    // under a TLD, which is what the TLD-wildcard rule exists to stop.
    if labels.len() >= 2 && labels[labels.len() - 2].contains('*') {
        return Some(format!(
            "`{pattern}` wildcards the registrable domain; the last two labels must be fixed, e.g. `*.example.com`"
        ));
    }
    None
}

/// The labels after the last wildcard label of a valid host glob, e.g.
/// `amazonaws.com` for `*.s3.*.amazonaws.com`: every matching host ends
/// with `.` + this suffix, which is how the snapshot indexes globs.
pub fn host_glob_fixed_suffix(pattern: &str) -> &str {
    match pattern.rfind('*') {
        Some(i) => match pattern[i..].find('.') {
            Some(dot) => &pattern[i + dot + 1..],
            None => "",
        },
        None => pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_star_matches_exactly_one_label() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "API.Example.com."));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(host_matches(
            "*-aiplatform.googleapis.com",
            "us-aiplatform.googleapis.com"
        ));
        assert!(host_matches(
            "*.s3.*.amazonaws.com",
            "bucket.s3.us-east-1.amazonaws.com"
        ));
        assert!(!host_matches(
            "*.s3.*.amazonaws.com",
            "bucket.s3.amazonaws.com"
        ));
    }

    #[test]
    fn host_double_star_matches_one_or_more_labels() {
        assert!(host_matches("**.example.com", "a.b.example.com"));
        assert!(host_matches("**.example.com", "a.example.com"));
        assert!(!host_matches("**.example.com", "example.com"));
        assert!(!host_matches("**.example.com", "a.b.example.org"));
        assert!(!host_matches("**.example.com", "badexample.com"));
    }

    #[test]
    fn exact_hosts_are_case_insensitive_and_ignore_a_trailing_dot() {
        assert!(host_matches("api.example.com", "API.EXAMPLE.COM."));
        assert!(!host_matches("api.example.com", "api.example.com.evil"));
    }

    #[test]
    fn path_star_stays_in_a_segment() {
        assert!(path_matches("/repos/*/issues", "/repos/acme/issues"));
        assert!(!path_matches(
            "/repos/*/issues",
            "/repos/acme/widgets/issues"
        ));
        assert!(!path_matches("/v1/*", "/v1/a/b"));
        assert!(path_matches("/repos/**", "/repos/a/b/c"));
        assert!(!path_matches("/repos/**", "/repos"));
        assert!(path_matches(
            "/**/git-upload-pack",
            "/org/repo.git/git-upload-pack"
        ));
        assert!(path_matches("/usr/bin/python3*", "/usr/bin/python3.11"));
        assert!(path_matches("/**", "/usr/local/bin/node"));
        assert!(path_matches("**", "/anything"));
        assert!(path_matches("/a/**/b/**/c", "/a/x/b/y/z/c"));
        assert!(!path_matches("/a/**/b/**/c", "/a/b/c"));
        assert!(path_matches("/v1/*.json", "/v1/data.json"));
        assert!(!path_matches("/v1/*.json", "/v1/data.xml"));
    }

    #[test]
    fn docs_claim_star_crosses_slash_but_runtime_wins() {
        // docs/reference/policy-schema.mdx says `/repos/*/issues` matches
        // several intervening segments; the runtime (regorus) does not.
        assert!(!path_matches("/repos/*/issues", "/repos/a/b/issues"));
        assert!(path_matches("/repos/**/issues", "/repos/a/b/issues"));
    }

    #[test]
    fn segment_star_semantics() {
        assert!(segment_matches(b"*", b""));
        assert!(segment_matches(b"a*", b"a"));
        assert!(segment_matches(b"*a*b", b"xxaxxb"));
        assert!(!segment_matches(b"*a*b", b"xxaxxbc"));
        assert!(segment_matches(b"a*b*c", b"abbbbc"));
        assert!(!segment_matches(b"abc", b"ab"));
        assert!(!segment_matches(b"", b"a"));
        assert!(segment_matches(b"", b""));
    }

    #[test]
    fn hostile_patterns_finish_quickly() {
        let text = "a".repeat(4096);
        let pattern = "*a".repeat(40) + "b";
        let start = std::time::Instant::now();
        assert!(!segment_matches(pattern.as_bytes(), text.as_bytes()));
        let path = "/x".repeat(1000);
        assert!(!path_matches("/**/**/**/**/**/y", &path));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_host_globs_are_explained() {
        assert!(host_glob_error("*.com").unwrap().contains("TLD wildcard"));
        assert!(host_glob_error("**.com").unwrap().contains("TLD wildcard"));
        assert!(host_glob_error("*").unwrap().contains("bare wildcard"));
        assert!(host_glob_error("**").unwrap().contains("bare wildcard"));
        assert!(
            host_glob_error("a.**.example.com")
                .unwrap()
                .contains("first label")
        );
        assert!(
            host_glob_error("a.b*.example.com")
                .unwrap()
                .contains("mixes")
        );
        assert!(host_glob_error("*.*.com").unwrap().contains("last two"));
        assert!(
            host_glob_error("api.example.*")
                .unwrap()
                .contains("top-level")
        );
        assert_eq!(host_glob_error("*.example.com"), None);
        assert_eq!(host_glob_error("*.s3.*.amazonaws.com"), None);
        assert_eq!(host_glob_error("api-*.example.com"), None);
        assert_eq!(host_glob_error("api.example.com"), None);
    }

    #[test]
    fn fixed_suffixes() {
        assert_eq!(host_glob_fixed_suffix("*.example.com"), "example.com");
        assert_eq!(host_glob_fixed_suffix("**.example.com"), "example.com");
        assert_eq!(host_glob_fixed_suffix("api-*.example.com"), "example.com");
        assert_eq!(
            host_glob_fixed_suffix("*.s3.*.amazonaws.com"),
            "amazonaws.com"
        );
        assert_eq!(host_glob_fixed_suffix("api.example.com"), "api.example.com");
    }
}
