//! The glob semantics of OpenShell's runtime (reference §1.5), which differ
//! from its docs; the runtime wins.

/// Host glob, `.` as delimiter, case-insensitive. `*` matches within one
/// label (a whole label or part of one); `**` only as the whole first label,
/// matching one or more labels.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let p: Vec<&str> = pattern.split('.').collect();
    let h: Vec<&str> = host.split('.').collect();
    if p.first() == Some(&"**") {
        let rest = &p[1..];
        return h.len() > rest.len() && labels_match(rest, &h[h.len() - rest.len()..]);
    }
    p.len() == h.len() && labels_match(&p, &h)
}

fn labels_match(pattern: &[&str], host: &[&str]) -> bool {
    pattern
        .iter()
        .zip(host)
        .all(|(p, h)| segment_matches(p.as_bytes(), h.as_bytes()))
}

/// `*` within one segment: matches any run of bytes of that segment.
pub fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| segment_matches(rest, &text[i..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t == c && segment_matches(rest, tail)),
    }
}

/// Binary (and REST path) glob, `/` as delimiter: `*` stays within a
/// segment, `**` as a whole segment crosses any number (one or more) of
/// segments.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "**" {
        return true;
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    segments_match(&p, &s)
}

fn segments_match(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (1..=s.len()).any(|i| segments_match(rest, &s[i..])),
        Some((seg, rest)) => s.split_first().is_some_and(|(first, tail)| {
            segment_matches(seg.as_bytes(), first.as_bytes()) && segments_match(rest, tail)
        }),
    }
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
    None
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
    }

    #[test]
    fn host_double_star_matches_one_or_more_labels() {
        assert!(host_matches("**.example.com", "a.b.example.com"));
        assert!(host_matches("**.example.com", "a.example.com"));
        assert!(!host_matches("**.example.com", "example.com"));
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
    }

    #[test]
    fn bad_host_globs_are_explained() {
        assert!(host_glob_error("*.com").unwrap().contains("TLD wildcard"));
        assert!(host_glob_error("*").unwrap().contains("bare wildcard"));
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
        assert_eq!(host_glob_error("*.example.com"), None);
        assert_eq!(host_glob_error("api.example.com"), None);
    }
}
