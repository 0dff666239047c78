//! Request-target canonicalisation (reference §2.7): one spelling per
//! resource, used both for the policy decision and on the wire, so the
//! upstream can never see a path the policy did not judge.
//!
//! The canonical path stays percent-encoded: unreserved bytes are decoded,
//! every other escape is normalised to uppercase hex, raw characters that
//! are never valid in a path are encoded. Anything ambiguous (control
//! bytes, raw non-ASCII, encoded dot segments, encoded slashes, `..` above
//! the root, fragments, backslashes) is rejected rather than guessed at.

use std::fmt::Write as _;

/// The longest path accepted, raw or canonical (OpenShell's limit).
pub const MAX_PATH_BYTES: usize = 4096;

/// A canonical request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Canonical path, in its encoded form for the wire; never has a query.
    pub path: String,
    /// The query string as the client sent it (without `?`), forwarded
    /// verbatim; `Some("")` for a bare trailing `?`.
    pub query: Option<String>,
    /// The query decoded into (name, value) pairs for matching, in order;
    /// names may repeat.
    pub params: Vec<(String, String)>,
    /// The lowercased `host[:port]` of an absolute-form target.
    pub authority: Option<String>,
}

impl Target {
    /// The origin-form target to send upstream: path, then `?query`.
    pub fn origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused. The text is written for the agent
/// and goes into the `invalid_request_target` 400 body as is; it never
/// echoes the target, which may carry credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target is empty")]
    Empty,
    #[error(
        "the request target must be a path starting with `/` or an absolute `http://` or `https://` URL"
    )]
    NotOriginForm,
    #[error(
        "the request target's authority is empty or malformed (user info and zone ids are not accepted)"
    )]
    InvalidAuthority,
    #[error("the request target contains a control character")]
    ControlByte,
    #[error("the request target contains a raw non-ASCII byte; percent-encode it")]
    NonAscii,
    #[error("the request target contains a space; percent-encode it as %20")]
    Space,
    #[error("the request target contains a fragment (`#`), which clients must not send")]
    Fragment,
    #[error("the path contains a backslash; use `/` or percent-encode it")]
    Backslash,
    #[error("the path contains a `%` that is not followed by two hex digits")]
    MalformedEscape,
    #[error("the path contains a percent-encoded control character (such as %00 or %0A)")]
    EncodedControl,
    #[error(
        "the path contains an encoded `/` or `\\` (%2F, %5C), which this endpoint does not allow"
    )]
    EncodedSlash,
    #[error("the path contains an encoded dot segment (such as %2e%2e)")]
    EncodedDotSegment,
    #[error(
        "the path contains percent-encoded bytes that are not UTF-8 (such as the overlong \
         %C0%AE, which lenient servers read as `.`); encode the character's UTF-8 bytes"
    )]
    EncodedInvalidUtf8,
    #[error("the path uses `..` to climb above the root")]
    EscapesRoot,
    #[error("the path is {len} bytes long, over the limit of {max} bytes")]
    PathTooLong { len: usize, max: usize },
}

impl TargetError {
    /// The `error` code of the 400 body.
    pub const CODE: &'static str = "invalid_request_target";

    /// The plain-language reason, for the 400 body and the audit log.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Canonicalises a request target: origin-form (`/path?query`) or
/// absolute-form (`http://host/path?query`, whose authority is returned).
/// `allow_encoded_slash` keeps `%2F` and `%5C` (encoded) instead of
/// rejecting them; pass the endpoint's `allow_encoded_slash`.
pub fn canonicalize(raw: &str, allow_encoded_slash: bool) -> Result<Target, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    // Checked over the whole target first: these bytes are as dangerous in
    // the query or authority as in the path.
    for b in raw.bytes() {
        match b {
            0x00..=0x1F | 0x7F => return Err(TargetError::ControlByte),
            0x80..=0xFF => return Err(TargetError::NonAscii),
            b' ' => return Err(TargetError::Space),
            b'#' => return Err(TargetError::Fragment),
            _ => {}
        }
    }
    let (authority, rest) = if raw.starts_with('/') {
        (None, raw)
    } else {
        let (authority, rest) = split_absolute(raw)?;
        (Some(authority), rest)
    };
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(TargetError::PathTooLong {
            len: raw_path.len(),
            max: MAX_PATH_BYTES,
        });
    }
    let path = if raw_path.is_empty() {
        // Only an absolute-form target can get here: `http://host?q`.
        "/".to_string()
    } else {
        canonical_path(raw_path, allow_encoded_slash)?
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(TargetError::PathTooLong {
            len: path.len(),
            max: MAX_PATH_BYTES,
        });
    }
    Ok(Target {
        path,
        params: query.map(parse_query).unwrap_or_default(),
        query: query.map(str::to_string),
        authority,
    })
}

/// Splits `scheme://authority[/path][?query]` into the lowercased
/// authority and the rest (empty, or starting with `/` or `?`).
fn split_absolute(raw: &str) -> Result<(String, &str), TargetError> {
    let (scheme, after) = raw.split_once("://").ok_or(TargetError::NotOriginForm)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(TargetError::NotOriginForm);
    }
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    // Alphanumerics, `-._~`, `:` for the port, brackets for IPv6. No `@`:
    // user info in a request target only serves to disguise the host.
    let valid =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(valid) {
        return Err(TargetError::InvalidAuthority);
    }
    Ok((authority.to_ascii_lowercase(), rest))
}

/// Canonicalises a path that starts with `/` and holds no `?`.
fn canonical_path(raw: &str, allow_encoded_slash: bool) -> Result<String, TargetError> {
    let Some(body) = raw.strip_prefix('/') else {
        return Err(TargetError::NotOriginForm);
    };
    if body.contains('\\') {
        return Err(TargetError::Backslash);
    }
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        // `;params` go before dot handling, so `..;x` is a plain `..`.
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            // Empty segments collapse; `.` is the current directory.
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(TargetError::EscapesRoot);
                }
            }
            _ => {
                let seg = normalize_segment(segment, allow_encoded_slash)?;
                // A dot segment that only appears after decoding is how
                // traversal hides from naive filters: refuse, do not resolve.
                if seg == "." || seg == ".." {
                    return Err(TargetError::EncodedDotSegment);
                }
                out.push(seg);
                continue;
            }
        }
        if i == last {
            trailing_slash = true;
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// Normalises one non-empty, param-free segment.
fn normalize_segment(seg: &str, allow_encoded_slash: bool) -> Result<String, TargetError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    // Decoded, the segment must be UTF-8, or a lenient decoder may read
    // an overlong form as `.` or `/`. Raw bytes are ASCII (checked
    // earlier), so each run of escaped non-ASCII bytes is checked on its
    // own; a plain ASCII path never allocates for it.
    let mut non_ascii: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(TargetError::MalformedEscape);
            };
            let v = (hi << 4) | lo;
            if v.is_ascii() {
                end_utf8_run(&mut non_ascii)?;
            } else {
                non_ascii.push(v);
            }
            match v {
                _ if is_unreserved(v) => out.push(char::from(v)),
                0x00..=0x1F | 0x7F => return Err(TargetError::EncodedControl),
                b'/' | b'\\' if !allow_encoded_slash => return Err(TargetError::EncodedSlash),
                _ => push_escape(&mut out, v),
            }
            i += 3;
        } else {
            end_utf8_run(&mut non_ascii)?;
            if is_unreserved(c) || is_sub_delim(c) || c == b':' || c == b'@' {
                out.push(char::from(c));
            } else {
                // `"<>[]^`{|}`: never valid raw in a path, equivalent to
                // their escapes, so they get one spelling.
                push_escape(&mut out, c);
            }
            i += 1;
        }
    }
    end_utf8_run(&mut non_ascii)?;
    Ok(out)
}

/// Checks a run of decoded non-ASCII bytes is UTF-8, then empties it.
fn end_utf8_run(run: &mut Vec<u8>) -> Result<(), TargetError> {
    if std::str::from_utf8(run).is_err() {
        return Err(TargetError::EncodedInvalidUtf8);
    }
    run.clear();
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "%{b:02X}");
}

/// Decodes a query into (name, value) pairs the way HTML forms encode
/// them: `&`-separated, `+` is a space, escapes decoded; a malformed
/// escape is kept as text and invalid UTF-8 becomes U+FFFD, as the
/// WHATWG parser most servers follow does. Empty pairs are skipped.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi << 4) | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> String {
        match canonicalize(raw, false) {
            Ok(t) => t.path,
            Err(e) => panic!("{raw:?}: {e}"),
        }
    }

    fn err(raw: &str) -> TargetError {
        match canonicalize(raw, false) {
            Ok(t) => panic!("{raw:?} was accepted as {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/v1/repos/acme/issues",
            "/a-b.c_d~e",
        ] {
            assert_eq!(path(p), p);
        }
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(path("/a/./b"), "/a/b");
        assert_eq!(path("/a/b/../c"), "/a/c");
        assert_eq!(path("/a/b/.."), "/a/");
        assert_eq!(path("/a/."), "/a/");
        assert_eq!(path("/a/.."), "/");
        assert_eq!(path("/./"), "/");
        assert_eq!(path("/a/b/c/../../d"), "/a/d");
        // Names made of dots are not dot segments.
        assert_eq!(path("/.../a"), "/.../a");
        assert_eq!(path("/.a/b./..c"), "/.a/b./..c");
    }

    #[test]
    fn climbing_above_the_root_is_rejected() {
        assert_eq!(err("/.."), TargetError::EscapesRoot);
        assert_eq!(err("/../a"), TargetError::EscapesRoot);
        assert_eq!(err("/a/../../b"), TargetError::EscapesRoot);
        assert_eq!(err("/a/..;x/..;y/b"), TargetError::EscapesRoot);
    }

    #[test]
    fn empty_segments_collapse() {
        assert_eq!(path("//a//b/"), "/a/b/");
        assert_eq!(path("//"), "/");
        assert_eq!(path("///a"), "/a");
        // Origin-form `//host/x` is a path, not a network reference.
        assert_eq!(path("//evil.test/x"), "/evil.test/x");
    }

    #[test]
    fn params_are_stripped_from_every_segment() {
        assert_eq!(path("/a;x=1/b"), "/a/b");
        assert_eq!(path("/a/b;jsessionid=123"), "/a/b");
        assert_eq!(path("/a;/b;"), "/a/b");
        assert_eq!(path("/a/;x/b"), "/a/b");
        assert_eq!(path("/a/;x"), "/a/");
        // Params are stripped before dot handling: `..;` is `..`.
        assert_eq!(path("/a/b/..;/c"), "/a/c");
        assert_eq!(path("/a/.;x/b"), "/a/b");
        // An encoded `;` is data, not a delimiter.
        assert_eq!(path("/a%3bx/b"), "/a%3Bx/b");
    }

    #[test]
    fn encoded_dot_segments_are_rejected() {
        for raw in [
            "/a/%2e%2e/b",
            "/a/%2E%2E/b",
            "/%2e%2e/",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2e/b",
            "/a/%2e",
            "/a/%2e%2e;x/b",
        ] {
            assert_eq!(err(raw), TargetError::EncodedDotSegment, "{raw}");
        }
        // Dots inside a longer name decode normally.
        assert_eq!(path("/a/%2e%2e%2ex"), "/a/...x");
        assert_eq!(path("/file%2ejson"), "/file.json");
    }

    #[test]
    fn encoded_slashes_need_the_endpoint_opt_in() {
        assert_eq!(err("/a/..%2fb"), TargetError::EncodedSlash);
        assert_eq!(err("/a%2Fb"), TargetError::EncodedSlash);
        assert_eq!(err("/a%5cb"), TargetError::EncodedSlash);
        assert_eq!(err("/a%5Cb"), TargetError::EncodedSlash);
        let t = canonicalize("/api/v4/projects/group%2fproject/issues", true).unwrap();
        assert_eq!(t.path, "/api/v4/projects/group%2Fproject/issues");
        // With the opt-in, `..%2f` is an ordinary name, kept encoded.
        assert_eq!(canonicalize("/a/..%2fb", true).unwrap().path, "/a/..%2Fb");
        assert_eq!(canonicalize("/a%5cb", true).unwrap().path, "/a%5Cb");
    }

    #[test]
    fn escapes_are_normalised() {
        // Unreserved bytes decode, in any case.
        assert_eq!(path("/%41%62%63"), "/Abc");
        assert_eq!(path("/%7e%5f%2D"), "/~_-");
        // Everything else keeps its escape, in uppercase.
        assert_eq!(path("/a%20b"), "/a%20b");
        assert_eq!(path("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(path("/x%3a%3A%40%25"), "/x%3A%3A%40%25");
        // Mixed-case spellings of one path are one canonical path.
        assert_eq!(path("/A%2ab"), "/A%2Ab");
        assert_eq!(path("/%7Euser"), path("/~user"));
        assert_eq!(path("/a%3Fb"), "/a%3Fb");
        // Raw characters that are never valid in a path get escaped.
        assert_eq!(
            path("/a{b}|c^d`e\"f<g>[h]"),
            "/a%7Bb%7D%7Cc%5Ed%60e%22f%3Cg%3E%5Bh%5D"
        );
        // Sub-delims, `:` and `@` stay raw.
        assert_eq!(path("/a:b@c!$&'()*+,="), "/a:b@c!$&'()*+,=");
    }

    #[test]
    fn encoded_bytes_that_are_not_utf8_are_rejected() {
        // Overlong `.` and `/`, a lone continuation byte, a truncated
        // sequence, and bytes that never appear in UTF-8.
        for raw in [
            "/public/%c0%ae%c0%ae/admin",
            "/a%c0%afb",
            "/a%80",
            "/caf%c3",
            "/%ff",
        ] {
            assert_eq!(err(raw), TargetError::EncodedInvalidUtf8, "{raw}");
        }
        assert_eq!(path("/caf%c3%a9/%e2%82%ac"), "/caf%C3%A9/%E2%82%AC");
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%2g/b", "/%%41"] {
            assert_eq!(err(raw), TargetError::MalformedEscape, "{raw}");
        }
    }

    #[test]
    fn control_bytes_raw_or_encoded_are_rejected() {
        assert_eq!(err("/a%00b"), TargetError::EncodedControl);
        assert_eq!(err("/a%0d%0aSet-Cookie:x"), TargetError::EncodedControl);
        assert_eq!(err("/a%0A"), TargetError::EncodedControl);
        assert_eq!(err("/a%7f"), TargetError::EncodedControl);
        assert_eq!(err("/a%09"), TargetError::EncodedControl);
        assert_eq!(err("/a\0b"), TargetError::ControlByte);
        assert_eq!(err("/a\r\nb"), TargetError::ControlByte);
        assert_eq!(err("/a\tb"), TargetError::ControlByte);
        assert_eq!(err("/a\x7f"), TargetError::ControlByte);
        assert_eq!(err("/a?q=\n"), TargetError::ControlByte);
    }

    #[test]
    fn raw_non_ascii_is_rejected() {
        assert_eq!(err("/café"), TargetError::NonAscii);
        assert_eq!(err("/a?q=ü"), TargetError::NonAscii);
        assert_eq!(err("/\u{202e}txt.exe"), TargetError::NonAscii);
    }

    #[test]
    fn other_invalid_targets() {
        assert_eq!(err(""), TargetError::Empty);
        assert_eq!(err("a/b"), TargetError::NotOriginForm);
        assert_eq!(err("*"), TargetError::NotOriginForm);
        assert_eq!(err("example.com:443"), TargetError::NotOriginForm);
        assert_eq!(err("ftp://example.com/x"), TargetError::NotOriginForm);
        assert_eq!(err("/a#frag"), TargetError::Fragment);
        assert_eq!(err("/a?q#frag"), TargetError::Fragment);
        assert_eq!(err("/a\\b"), TargetError::Backslash);
        assert_eq!(err("/a/..\\..\\b"), TargetError::Backslash);
        assert_eq!(err("/a b"), TargetError::Space);
    }

    #[test]
    fn long_paths_are_rejected() {
        let ok = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(path(&ok).len(), MAX_PATH_BYTES);
        let raw = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(
            err(&raw),
            TargetError::PathTooLong {
                len: MAX_PATH_BYTES + 1,
                max: MAX_PATH_BYTES
            }
        );
        // Escaping can grow a path past the limit too.
        let grows = format!("/{}", "{".repeat(2000));
        assert!(matches!(
            err(&grows),
            TargetError::PathTooLong { len: 6001, .. }
        ));
        // The query does not count toward the path limit.
        let q = format!("/a?{}", "q".repeat(10_000));
        assert_eq!(path(&q), "/a");
        // Huge hostile inputs finish quickly and do not panic.
        let hostile = "/%2e".repeat(1000) + &"/..".repeat(1000);
        assert!(canonicalize(&hostile, false).is_err());
        let deep = "/a/..".repeat(800);
        assert_eq!(path(&deep), "/");
    }

    #[test]
    fn query_is_verbatim_and_parsed() {
        let t = canonicalize(
            "/s?q=a+b%20c&tag=x&tag=y&empty=&flag&&%zz=1&n=%C3%A9",
            false,
        )
        .unwrap();
        assert_eq!(t.path, "/s");
        assert_eq!(
            t.query.as_deref(),
            Some("q=a+b%20c&tag=x&tag=y&empty=&flag&&%zz=1&n=%C3%A9")
        );
        let pairs: Vec<(&str, &str)> = t
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("q", "a b c"),
                ("tag", "x"),
                ("tag", "y"),
                ("empty", ""),
                ("flag", ""),
                ("%zz", "1"),
                ("n", "é"),
            ]
        );
        let t = canonicalize("/s?", false).unwrap();
        assert_eq!(t.query.as_deref(), Some(""));
        assert!(t.params.is_empty());
        let t = canonicalize("/s", false).unwrap();
        assert_eq!(t.query, None);
        // A query may hold what a path may not; it is not canonicalised.
        let t = canonicalize("/s?p=/../%2e%2e\\{}", false).unwrap();
        assert_eq!(t.path, "/s");
        assert_eq!(t.params, [("p".to_string(), "/../..\\{}".to_string())]);
        // `%FF` is not UTF-8: lossy, never a panic.
        let t = canonicalize("/s?b=%FF", false).unwrap();
        assert_eq!(t.params[0].1, "\u{FFFD}");
        // The query's `?` ends the path even if the path has dots.
        assert_eq!(
            canonicalize("/a/../b?x=..", false).unwrap().origin_form(),
            "/b?x=.."
        );
    }

    #[test]
    fn absolute_form_is_split() {
        let t = canonicalize("http://Policy.Local/v1/denials?last=5", false).unwrap();
        assert_eq!(t.authority.as_deref(), Some("policy.local"));
        assert_eq!(t.path, "/v1/denials");
        assert_eq!(t.query.as_deref(), Some("last=5"));
        let t = canonicalize("HTTPS://api.example.com:8443/a/./b", false).unwrap();
        assert_eq!(t.authority.as_deref(), Some("api.example.com:8443"));
        assert_eq!(t.path, "/a/b");
        let t = canonicalize("http://[2001:db8::1]:80", false).unwrap();
        assert_eq!(t.authority.as_deref(), Some("[2001:db8::1]:80"));
        assert_eq!(t.path, "/");
        let t = canonicalize("http://h.test?x=1", false).unwrap();
        assert_eq!((t.path.as_str(), t.query.as_deref()), ("/", Some("x=1")));
        assert_eq!(canonicalize("/a", false).unwrap().authority, None);
        // The path of an absolute target gets the same scrutiny.
        assert_eq!(
            canonicalize("http://h.test/%2e%2e/x", false).unwrap_err(),
            TargetError::EncodedDotSegment
        );
        assert_eq!(
            canonicalize("http://h.test/..", false).unwrap_err(),
            TargetError::EscapesRoot
        );
        for bad in [
            "http:///x",
            "http://user:pw@h.test/x",
            "http://h.test%2f@evil/x",
            "http://[fe80::1%25eth0]/x",
            "http://",
        ] {
            assert_eq!(
                canonicalize(bad, false).unwrap_err(),
                TargetError::InvalidAuthority,
                "{bad}"
            );
        }
    }

    #[test]
    fn canonicalisation_is_idempotent() {
        let inputs = [
            "/",
            "//a//b/",
            "/a;x=1/b",
            "/a/./b/../c/",
            "/%41%7e/%c3%a9/%3b",
            "/a{b}|c",
            "/x/..;/y;z",
            "/a%20b?q=1&r=%2e%2e",
            "/file%2ejson",
            "/a/%2e%2e%2ex/",
            "http://h.test/a/../b?c",
        ];
        for raw in inputs {
            let once = canonicalize(raw, false).unwrap();
            let twice = canonicalize(&once.origin_form(), false).unwrap();
            assert_eq!(once.path, twice.path, "{raw}");
            assert_eq!(once.query, twice.query, "{raw}");
            assert_eq!(once.params, twice.params, "{raw}");
        }
        for raw in ["/a%2fb/../c%5C", "/g%2Fp/..%2f"] {
            let once = canonicalize(raw, true).unwrap();
            let twice = canonicalize(&once.origin_form(), true).unwrap();
            assert_eq!(once, twice, "{raw}");
        }
    }

    #[test]
    fn every_printable_ascii_byte_canonicalises_idempotently_or_is_rejected() {
        // Exhaustive over one- and two-byte segments: never panics, and
        // whatever is accepted is a fixed point.
        let printable: Vec<char> = (0x21u8..0x7F).map(char::from).collect();
        for &a in &printable {
            for &b in &printable {
                for raw in [
                    format!("/{a}{b}"),
                    format!("/x/{a}{b}/y"),
                    format!("/%{a}{b}"),
                ] {
                    if let Ok(once) = canonicalize(&raw, false) {
                        let twice = canonicalize(&once.origin_form(), false)
                            .unwrap_or_else(|e| panic!("{raw:?} -> {once:?}: {e}"));
                        assert_eq!(once, twice, "{raw:?}");
                        assert!(once.path.starts_with('/'));
                        assert!(!once.path.contains("//"), "{raw:?} -> {}", once.path);
                        assert!(
                            !once.path.split('/').any(|s| s == "." || s == ".."),
                            "{raw:?} -> {}",
                            once.path
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reasons_are_plain_text_without_the_target() {
        let e = canonicalize("/secret-token/%2e%2e/x", false).unwrap_err();
        assert_eq!(TargetError::CODE, "invalid_request_target");
        assert!(e.reason().contains("encoded dot segment"));
        assert!(!e.reason().contains("secret"));
    }
}
