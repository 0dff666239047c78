//! DNS query parser (every datagram a sandboxed process sends to port 53)
//! and the reply builders. Invariants: never panics; a parsed name is
//! lowercase; replies fit the client's limit, echo id and question, and
//! are responses (never parse as queries, so no reply loops).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use portcullis_agent::dns::wire::{
    HEADER_LEN, Query, Rcode, WireError, build_answer, build_error, build_format_error,
    parse_query, response_limit,
};

fn check_reply(q: &Query, reply: &[u8]) {
    assert!(
        reply.len() <= response_limit(q),
        "reply of {} bytes over the limit",
        reply.len()
    );
    assert_eq!(reply.get(..2), Some(&q.id.to_be_bytes()[..]));
    assert_eq!(
        reply.get(HEADER_LEN..HEADER_LEN + q.question.len()),
        Some(&q.question[..])
    );
    assert_eq!(parse_query(reply), Err(WireError::NotAQuery));
}

fuzz_target!(|data: &[u8]| {
    match parse_query(data) {
        Ok(q) => {
            assert!(
                !q.name.bytes().any(|b| b.is_ascii_uppercase()),
                "{:?}",
                q.name
            );
            // Up to 99 addresses of each family, so some replies truncate.
            let n = usize::from(q.id % 100);
            let addrs: Vec<IpAddr> = (0..n)
                .flat_map(|i| {
                    let i = i as u8;
                    [
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i.into())),
                    ]
                })
                .collect();
            check_reply(&q, &build_answer(&q, &addrs, 30));
            check_reply(&q, &build_error(&q, Rcode::NxDomain));
        }
        Err(_) => {
            if let Some(reply) = build_format_error(data) {
                assert_eq!(reply.len(), HEADER_LEN);
                assert_eq!(parse_query(&reply), Err(WireError::NotAQuery));
            }
        }
    }
});
