//! Request-target canonicalisation, with both `allow_encoded_slash` values.
//! Invariants (module docs): the path starts with `/`, holds no query, dot
//! segment or byte invalid in a path, and escapes are uppercase; it is its
//! own canonical form ("one spelling per resource"), and so is the origin
//! form; the flag only matters for %2F and %5C.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_agent::proxy::http::canonical::{MAX_PATH_BYTES, Target, canonicalize};

fn check(raw: &str, allow_encoded_slash: bool, t: &Target) {
    let path = &t.path;
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(path.len() <= MAX_PATH_BYTES);
    assert!(
        path.split('/').skip(1).all(|s| s != "." && s != ".."),
        "{raw:?} -> {path:?}"
    );
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        assert!(ok, "{raw:?} -> {path:?}: raw byte {b:#04x}");
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                hex.len() == 2 && hex.iter().all(|h| matches!(h, b'0'..=b'9' | b'A'..=b'F')),
                "{raw:?} -> {path:?}: escape not uppercase hex"
            );
        }
    }
    let again = canonicalize(path, allow_encoded_slash);
    let expected = Target {
        path: path.clone(),
        query: None,
        params: Vec::new(),
        authority: None,
    };
    assert_eq!(
        again,
        Ok(expected),
        "{raw:?}: canonical path is not a fixed point"
    );
    let origin = canonicalize(&t.origin_form(), allow_encoded_slash);
    let expected = Target {
        authority: None,
        ..t.clone()
    };
    assert_eq!(
        origin,
        Ok(expected),
        "{raw:?}: origin form is not a fixed point"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let strict = canonicalize(raw, false);
    let lenient = canonicalize(raw, true);
    if let Ok(t) = &strict {
        check(raw, false, t);
        assert_eq!(
            &lenient, &strict,
            "{raw:?}: the flag changed an accepted target"
        );
    }
    if let Ok(t) = &lenient {
        check(raw, true, t);
        // Judged on the raw path: `..` may drop a segment that held one.
        let raw_path = raw
            .split('?')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if !raw_path.contains("%2F") && !raw_path.contains("%5C") {
            assert_eq!(
                &strict, &lenient,
                "{raw:?}: refused without an encoded slash"
            );
        }
    }
});
