//! Client-stream sniffer (TLS ClientHello / HTTP/1.x head) and host
//! normalisation. Invariants (module docs): never panics; `sniff` never
//! says NeedMore once given MAX_SNIFF bytes; `sniff_final` never says
//! NeedMore and says Unknown for no bytes; `normalize_host` lowercases.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_agent::proxy::sniff::{
    HostHeader, MAX_SNIFF, Sniffed, normalize_host, sniff, sniff_final,
};

fn normalized(host: &str) {
    let n = normalize_host(host);
    assert!(
        !n.bytes().any(|b| b.is_ascii_uppercase()),
        "{host:?} -> {n:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let first = sniff(data);
    let last = sniff_final(data);
    assert_ne!(last, Sniffed::NeedMore);
    if data.is_empty() {
        assert_eq!(last, Sniffed::Unknown);
    } else if first != Sniffed::NeedMore {
        assert_eq!(last, first);
    }
    match &first {
        Sniffed::Tls {
            sni: Some(name), ..
        } => normalized(name),
        Sniffed::Http {
            host: HostHeader::One(host),
            ..
        } => normalized(host),
        _ => {}
    }
    // libFuzzer inputs are short: repeat this one past the limit.
    if !data.is_empty() {
        let long: Vec<u8> = data.iter().copied().cycle().take(MAX_SNIFF).collect();
        assert_ne!(sniff(&long), Sniffed::NeedMore);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        normalized(text);
    }
});
