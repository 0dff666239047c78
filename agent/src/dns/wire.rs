//! DNS message codec (RFC 1035, with the EDNS0 bits of RFC 6891) for what a
//! stub resolver sends us and what we send back.
//!
//! Pure: no I/O. Every input is untrusted (it comes from the sandboxed
//! workload), so parsing is bounds-checked everywhere and never panics.

use std::net::IpAddr;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_MX: u16 = 15;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SVCB: u16 = 64;
pub const TYPE_HTTPS: u16 = 65;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;

pub const CLASS_IN: u16 = 1;
pub const CLASS_CH: u16 = 3;
pub const CLASS_ANY: u16 = 255;

/// Largest reply a client without EDNS accepts over UDP (RFC 1035 4.2.1).
pub const MIN_UDP_PAYLOAD: usize = 512;
/// Ceiling on replies even when the client advertises more: the DNS Flag Day
/// 2020 value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// A name is at most 255 octets on the wire, length bytes and root included.
const MAX_NAME_WIRE_LEN: usize = 255;

const FLAG_QR: u16 = 0x8000;
const OPCODE_MASK: u16 = 0x7800;
const OPCODE_SHIFT: u16 = 11;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// Top two bits of a length byte: 00 = label, 11 = compression pointer,
/// 01/10 = obsolete or undefined extended label types.
const LABEL_KIND_MASK: u8 = 0xC0;
const LABEL_KIND_POINTER: u8 = 0xC0;

/// Compression pointer to offset 12: the question name, which always
/// directly follows the header.
const POINTER_TO_QUESTION: [u8; 2] = [0xC0, 0x0C];

/// Response codes we can send (RFC 1035 4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// Why a packet is not a query we can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("message is a response, not a query")]
    NotAQuery,
    /// The caller should reply NOTIMP rather than FORMERR.
    #[error("opcode {0} not implemented")]
    NotImplemented(u8),
    #[error("expected exactly one question, found {0}")]
    QuestionCount(u16),
    #[error("invalid label length byte {0:#04x}")]
    BadLabel(u8),
    #[error("name longer than 255 octets")]
    NameTooLong,
    /// Nothing precedes the question, so a pointer there can only point into
    /// the header or at itself: never legitimate.
    #[error("compression pointer in the question name")]
    CompressedQuestion,
    #[error("more than one OPT record")]
    DuplicateOpt,
    #[error("OPT record with a non-root owner name")]
    BadOpt,
}

/// A parsed standard query with exactly one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub recursion_desired: bool,
    /// Presentation form: lowercase, no trailing dot, "" for the root.
    /// Bytes that would be ambiguous or unprintable are escaped as in zone
    /// files (`\.`, `\\`, `\DDD`), so one label can never pass for two.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section exactly as received, echoed back unchanged so
    /// clients that randomise case (DNS 0x20) see their own spelling.
    pub question: Vec<u8>,
    /// UDP payload size from the client's EDNS OPT record, if it sent one.
    pub edns_udp_size: Option<u16>,
}

/// Parses a DNS query as a stub resolver sends it.
pub fn parse_query(packet: &[u8]) -> Result<Query, WireError> {
    let mut r = Reader::new(packet);
    let id = r.u16()?;
    let flags = r.u16()?;
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    let nscount = r.u16()?;
    let arcount = r.u16()?;

    if flags & FLAG_QR != 0 {
        return Err(WireError::NotAQuery);
    }
    let opcode = opcode_of(flags);
    if opcode != 0 {
        return Err(WireError::NotImplemented(opcode));
    }
    if qdcount != 1 {
        return Err(WireError::QuestionCount(qdcount));
    }

    let question_start = r.pos;
    let name = read_question_name(&mut r)?;
    let qtype = r.u16()?;
    let qclass = r.u16()?;
    let question = packet
        .get(question_start..r.pos)
        .ok_or(WireError::Truncated)?
        .to_vec();

    // Queries should carry no answer or authority records; skip any rather
    // than reject, but they must still be well formed.
    for _ in 0..u32::from(ancount) + u32::from(nscount) {
        read_record(&mut r)?;
    }
    let mut edns_udp_size = None;
    for _ in 0..arcount {
        let record = read_record(&mut r)?;
        if record.rtype != TYPE_OPT {
            continue; // e.g. TSIG: not ours to check.
        }
        if !record.owner_is_root {
            return Err(WireError::BadOpt);
        }
        if edns_udp_size.is_some() {
            return Err(WireError::DuplicateOpt);
        }
        // In OPT the class field carries the requestor's UDP payload size.
        edns_udp_size = Some(record.class);
    }
    // Trailing bytes after the counted sections are ignored, as most servers do.

    Ok(Query {
        id,
        recursion_desired: flags & FLAG_RD != 0,
        name,
        qtype,
        qclass,
        question,
        edns_udp_size,
    })
}

/// The largest reply this client accepts: 512 without EDNS, otherwise its
/// advertised size clamped to [512, 1232].
pub fn response_limit(query: &Query) -> usize {
    match query.edns_udp_size {
        Some(size) => usize::from(size).clamp(MIN_UDP_PAYLOAD, usize::from(MAX_UDP_PAYLOAD)),
        None => MIN_UDP_PAYLOAD,
    }
}

/// A NOERROR reply carrying the addresses that match the query type (A for
/// IPv4, AAAA for IPv6; nothing for other types, i.e. NODATA). If the reply
/// would not fit the client's limit the answers are dropped and TC is set.
pub fn build_answer(query: &Query, addrs: &[IpAddr], ttl: u32) -> Vec<u8> {
    let mut answers = Vec::new();
    let mut count: usize = 0;
    for addr in addrs {
        let rdata: &[u8] = match (query.qtype, addr) {
            (TYPE_A, IpAddr::V4(v4)) => &v4.octets(),
            (TYPE_AAAA, IpAddr::V6(v6)) => &v6.octets(),
            _ => continue,
        };
        write_answer(&mut answers, query, ttl, rdata);
        count += 1;
    }

    let fixed_len = HEADER_LEN + query.question.len() + opt_len(query);
    let fits = fixed_len + answers.len() <= response_limit(query);
    let ancount = u16::try_from(count).ok().filter(|_| fits);
    let (truncated, ancount) = match ancount {
        Some(n) => (false, n),
        None => {
            answers.clear();
            (true, 0)
        }
    };

    let flags = response_flags(query.recursion_desired, truncated, Rcode::NoError);
    let mut out = Vec::with_capacity(fixed_len + answers.len());
    write_header(&mut out, query.id, flags, 1, ancount, opt_count(query));
    out.extend_from_slice(&query.question);
    out.extend_from_slice(&answers);
    write_opt(&mut out, query);
    out
}

/// An error reply (NXDOMAIN, SERVFAIL, REFUSED, NOTIMP, ...) to a parsed
/// query, with the question echoed.
pub fn build_error(query: &Query, rcode: Rcode) -> Vec<u8> {
    let flags = response_flags(query.recursion_desired, false, rcode);
    let mut out = Vec::with_capacity(HEADER_LEN + query.question.len() + opt_len(query));
    write_header(&mut out, query.id, flags, 1, 0, opt_count(query));
    out.extend_from_slice(&query.question);
    write_opt(&mut out, query);
    out
}

/// A FORMERR reply to a packet we could not parse, echoing its id. `None`
/// (drop it) when there is no complete header to answer.
pub fn build_format_error(packet: &[u8]) -> Option<Vec<u8>> {
    build_bare_error(packet, Rcode::FormErr)
}

/// A header-only error reply to a packet we could not parse as a query
/// (FORMERR, or NOTIMP for an unknown opcode), echoing its id, opcode and RD
/// bit. `None` (drop it) when there is no complete header, or when the
/// packet is itself a response: answering responses invites reply loops.
pub fn build_bare_error(packet: &[u8], rcode: Rcode) -> Option<Vec<u8>> {
    if packet.len() < HEADER_LEN {
        return None;
    }
    let mut r = Reader::new(packet);
    let id = r.u16().ok()?;
    let request_flags = r.u16().ok()?;
    if request_flags & FLAG_QR != 0 {
        return None;
    }
    let flags =
        response_flags(request_flags & FLAG_RD != 0, false, rcode) | (request_flags & OPCODE_MASK);
    let mut out = Vec::with_capacity(HEADER_LEN);
    write_header(&mut out, id, flags, 0, 0, 0);
    Some(out)
}

fn opcode_of(flags: u16) -> u8 {
    // Four bits, so the cast cannot truncate.
    ((flags & OPCODE_MASK) >> OPCODE_SHIFT) as u8
}

fn response_flags(recursion_desired: bool, truncated: bool, rcode: Rcode) -> u16 {
    // QR set; AA clear (we are not authoritative); RA set (we recurse for
    // the client); opcode 0 (QUERY).
    let mut flags = FLAG_QR | FLAG_RA | u16::from(rcode as u8);
    if recursion_desired {
        flags |= FLAG_RD;
    }
    if truncated {
        flags |= FLAG_TC;
    }
    flags
}

/// Writes a header; we never send authority records.
fn write_header(out: &mut Vec<u8>, id: u16, flags: u16, qdcount: u16, ancount: u16, arcount: u16) {
    for field in [id, flags, qdcount, ancount, 0, arcount] {
        out.extend_from_slice(&field.to_be_bytes());
    }
}

fn write_answer(out: &mut Vec<u8>, query: &Query, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&POINTER_TO_QUESTION);
    out.extend_from_slice(&query.qtype.to_be_bytes());
    out.extend_from_slice(&query.qclass.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    // rdata is 4 or 16 bytes.
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// RFC 6891 6.1.1: a reply to an EDNS query must carry an OPT record too.
fn opt_count(query: &Query) -> u16 {
    u16::from(query.edns_udp_size.is_some())
}

/// Root owner (1) + type (2) + class (2) + TTL (4) + RDLENGTH (2).
fn opt_len(query: &Query) -> usize {
    usize::from(opt_count(query)) * 11
}

fn write_opt(out: &mut Vec<u8>, query: &Query) {
    if query.edns_udp_size.is_none() {
        return;
    }
    out.push(0); // root owner name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes()); // our payload size
    out.extend_from_slice(&0u32.to_be_bytes()); // extended rcode 0, version 0, no DO
    out.extend_from_slice(&0u16.to_be_bytes()); // no options
}

/// Reads the question name into presentation form; see [`Query::name`].
fn read_question_name(r: &mut Reader<'_>) -> Result<String, WireError> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    loop {
        let len = r.u8()?;
        match len & LABEL_KIND_MASK {
            0 => {}
            LABEL_KIND_POINTER => return Err(WireError::CompressedQuestion),
            _ => return Err(WireError::BadLabel(len)),
        }
        if len == 0 {
            return Ok(name);
        }
        wire_len += 1 + usize::from(len);
        // Leave room for the terminating root byte.
        if wire_len >= MAX_NAME_WIRE_LEN {
            return Err(WireError::NameTooLong);
        }
        let label = r.take(usize::from(len))?;
        if !name.is_empty() {
            name.push('.');
        }
        push_label(&mut name, label);
    }
}

/// Appends one label, lowercased, escaping bytes that are not plain
/// printable ASCII or that would change how the name splits into labels.
fn push_label(name: &mut String, label: &[u8]) {
    for &byte in label {
        let byte = byte.to_ascii_lowercase();
        match byte {
            b'.' | b'\\' => {
                name.push('\\');
                name.push(char::from(byte));
            }
            0x21..=0x7e => name.push(char::from(byte)),
            _ => {
                name.push('\\');
                for digit in [byte / 100, byte / 10 % 10, byte % 10] {
                    name.push(char::from(b'0' + digit));
                }
            }
        }
    }
}

/// The parts of a resource record the parser cares about.
struct RecordHead {
    owner_is_root: bool,
    rtype: u16,
    class: u16,
}

/// Reads (and bounds-checks) one resource record, returning its head.
fn read_record(r: &mut Reader<'_>) -> Result<RecordHead, WireError> {
    let owner_is_root = skip_name(r)?;
    let rtype = r.u16()?;
    let class = r.u16()?;
    let _ttl = r.u32()?;
    let rdlength = r.u16()?;
    r.take(usize::from(rdlength))?;
    Ok(RecordHead {
        owner_is_root,
        rtype,
        class,
    })
}

/// Skips a possibly compressed name without following pointers: a pointer
/// always ends a name, so skipping needs no loop protection. Returns whether
/// the name was the root.
fn skip_name(r: &mut Reader<'_>) -> Result<bool, WireError> {
    let mut wire_len = 0usize;
    loop {
        let len = r.u8()?;
        match len & LABEL_KIND_MASK {
            0 if len == 0 => return Ok(wire_len == 0),
            0 => {
                wire_len += 1 + usize::from(len);
                if wire_len >= MAX_NAME_WIRE_LEN {
                    return Err(WireError::NameTooLong);
                }
                r.take(usize::from(len))?;
            }
            LABEL_KIND_POINTER => {
                r.u8()?;
                return Ok(false);
            }
            _ => return Err(WireError::BadLabel(len)),
        }
    }
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// What `dig example.test A` (BIND 9.18) sends: RD and AD set, one OPT
    /// record advertising 1232 bytes with an 8-byte client cookie.
    const DIG_EXAMPLE_TEST_A: &[u8] = &[
        0x12, 0x34, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // header
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x04, b't', b'e', b's', b't', 0x00, 0x00,
        0x01, 0x00, 0x01, // A IN
        0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0c, // OPT, 12 bytes rdata
        0x00, 0x0a, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, // COOKIE option
    ];

    /// Builds a query the way glibc's stub resolver does: RD set, no EDNS.
    fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [id, FLAG_RD, 1, 0, 0, 0] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.extend_from_slice(&encode_name(name));
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    fn encode_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn with_edns(mut packet: Vec<u8>, size: u16) -> Vec<u8> {
        packet[11] += 1; // ARCOUNT
        packet.extend_from_slice(&[0, 0, 41]);
        packet.extend_from_slice(&size.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        packet
    }

    fn field(packet: &[u8], index: usize) -> u16 {
        u16::from_be_bytes([packet[index * 2], packet[index * 2 + 1]])
    }

    fn rcode(packet: &[u8]) -> u16 {
        field(packet, 1) & 0x000f
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn parses_dig_query_with_edns_cookie() {
        let q = parse_query(DIG_EXAMPLE_TEST_A).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        assert_eq!(q.name, "example.test");
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert_eq!(q.question, DIG_EXAMPLE_TEST_A[12..30]);
        assert_eq!(q.edns_udp_size, Some(1232));
    }

    #[test]
    fn parses_plain_query_without_edns() {
        let q = parse_query(&query_bytes(7, "www.example.com", TYPE_AAAA)).unwrap();
        assert_eq!(q.name, "www.example.com");
        assert_eq!(q.qtype, TYPE_AAAA);
        assert_eq!(q.edns_udp_size, None);
    }

    #[test]
    fn folds_case_but_keeps_question_bytes() {
        let packet = query_bytes(1, "ExAmPlE.TeSt", TYPE_A);
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.name, "example.test");
        assert_eq!(q.question, packet[12..]);
        let reply = build_answer(&q, &[v4(1)], 60);
        assert_eq!(&reply[12..12 + q.question.len()], &packet[12..]);
    }

    #[test]
    fn root_name_is_empty() {
        let q = parse_query(&query_bytes(1, ".", TYPE_NS)).unwrap();
        assert_eq!(q.name, "");
    }

    #[test]
    fn escapes_bytes_that_could_fake_label_boundaries() {
        let mut packet = query_bytes(1, "x", TYPE_A);
        packet.truncate(12);
        packet.extend_from_slice(&[5, b'a', b'.', b'B', b'\\', 0, 1, 0xff, 0, 0, 1, 0, 1]);
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.name, r"a\.b\\\000.\255");
    }

    #[test]
    fn every_proper_prefix_is_truncated() {
        for len in 0..DIG_EXAMPLE_TEST_A.len() {
            assert_eq!(
                parse_query(&DIG_EXAMPLE_TEST_A[..len]),
                Err(WireError::Truncated),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn rejects_label_length_over_63() {
        let mut packet = query_bytes(1, "x", TYPE_A);
        packet[12] = 64;
        assert_eq!(parse_query(&packet), Err(WireError::BadLabel(64)));
    }

    #[test]
    fn rejects_pointer_loop_in_question() {
        let mut packet = query_bytes(1, "x", TYPE_A);
        packet.truncate(12);
        packet.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // points at itself
        assert_eq!(parse_query(&packet), Err(WireError::CompressedQuestion));
    }

    #[test]
    fn name_length_limit_is_255_octets() {
        let label = "a".repeat(63);
        // 3 * 64 + 62 + 1 = 255: the longest legal name.
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert!(parse_query(&query_bytes(1, &longest, TYPE_A)).is_ok());
        let too_long = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        assert_eq!(
            parse_query(&query_bytes(1, &too_long, TYPE_A)),
            Err(WireError::NameTooLong)
        );
    }

    #[test]
    fn rejects_question_counts_other_than_one() {
        let mut packet = query_bytes(1, "a.test", TYPE_A);
        packet[5] = 2;
        let question = packet[12..].to_vec();
        packet.extend_from_slice(&question);
        assert_eq!(parse_query(&packet), Err(WireError::QuestionCount(2)));
        packet[5] = 0;
        assert_eq!(parse_query(&packet), Err(WireError::QuestionCount(0)));
    }

    #[test]
    fn rejects_responses_and_other_opcodes() {
        let mut packet = query_bytes(1, "a.test", TYPE_A);
        packet[2] |= 0x80;
        assert_eq!(parse_query(&packet), Err(WireError::NotAQuery));
        packet[2] = 5 << 3; // UPDATE
        assert_eq!(parse_query(&packet), Err(WireError::NotImplemented(5)));
    }

    #[test]
    fn rejects_duplicate_or_misplaced_opt() {
        let twice = with_edns(with_edns(query_bytes(1, "a.test", TYPE_A), 1232), 512);
        assert_eq!(parse_query(&twice), Err(WireError::DuplicateOpt));

        let mut named = query_bytes(1, "a.test", TYPE_A);
        named[11] = 1;
        named.extend_from_slice(&[0xc0, 0x0c, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_query(&named), Err(WireError::BadOpt));
    }

    #[test]
    fn skips_other_additional_records_and_trailing_bytes() {
        let mut packet = query_bytes(1, "a.test", TYPE_A);
        packet[11] = 1;
        // A compressed owner name, TXT type, 3 bytes rdata.
        packet.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 0, 0, 3, 2, b'h', b'i']);
        packet.extend_from_slice(&[0xde, 0xad]);
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.name, "a.test");
        assert_eq!(q.edns_udp_size, None);
    }

    #[test]
    fn rejects_additional_record_with_bad_rdlength() {
        let mut packet = with_edns(query_bytes(1, "a.test", TYPE_A), 1232);
        let last = packet.len() - 1;
        packet[last] = 9; // claims 9 bytes of options that are not there
        assert_eq!(parse_query(&packet), Err(WireError::Truncated));
    }

    #[test]
    fn answer_a_round_trip() {
        let q = parse_query(&query_bytes(0xbeef, "a.test", TYPE_A)).unwrap();
        let addrs = [
            v4(0x0a00_0001),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            v4(0x0a00_0002),
        ];
        let reply = build_answer(&q, &addrs, 300);
        assert_eq!(field(&reply, 0), 0xbeef);
        assert_eq!(field(&reply, 1), 0x8180); // QR RD RA, NOERROR
        assert_eq!(
            [
                field(&reply, 2),
                field(&reply, 3),
                field(&reply, 4),
                field(&reply, 5)
            ],
            [1, 2, 0, 0]
        );
        let answers = &reply[12 + q.question.len()..];
        assert_eq!(
            answers,
            [
                0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 10, 0, 0, 1, //
                0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 10, 0, 0, 2,
            ]
        );
    }

    #[test]
    fn answer_aaaa_keeps_only_ipv6() {
        let q = parse_query(&query_bytes(1, "a.test", TYPE_AAAA)).unwrap();
        let reply = build_answer(&q, &[v4(1), IpAddr::V6(Ipv6Addr::LOCALHOST)], 5);
        assert_eq!(field(&reply, 3), 1);
        let rr = &reply[12 + q.question.len()..];
        assert_eq!(&rr[2..4], &TYPE_AAAA.to_be_bytes());
        assert_eq!(&rr[10..12], &[0, 16]);
        assert_eq!(&rr[12..], &Ipv6Addr::LOCALHOST.octets());
    }

    #[test]
    fn other_types_get_nodata() {
        let q = parse_query(&query_bytes(1, "a.test", TYPE_MX)).unwrap();
        let reply = build_answer(&q, &[v4(1)], 5);
        assert_eq!(rcode(&reply), 0);
        assert_eq!(field(&reply, 3), 0);
        assert_eq!(reply.len(), 12 + q.question.len());
    }

    #[test]
    fn truncates_at_512_without_edns() {
        let q = parse_query(&query_bytes(1, "a.test", TYPE_A)).unwrap();
        // 12 + 12 question + 31 * 16 = 520 > 512; 30 answers = 504 fit.
        let fits: Vec<IpAddr> = (0..30).map(v4).collect();
        let reply = build_answer(&q, &fits, 5);
        assert_eq!((field(&reply, 1) & FLAG_TC, field(&reply, 3)), (0, 30));

        let too_many: Vec<IpAddr> = (0..31).map(v4).collect();
        let reply = build_answer(&q, &too_many, 5);
        assert_eq!(field(&reply, 1) & FLAG_TC, FLAG_TC);
        assert_eq!(field(&reply, 3), 0);
        assert_eq!(reply.len(), 12 + q.question.len());
    }

    #[test]
    fn edns_raises_limit_up_to_1232() {
        let q = parse_query(&with_edns(query_bytes(1, "a.test", TYPE_A), 4096)).unwrap();
        assert_eq!(response_limit(&q), 1232);
        // 12 + 12 + 11 (OPT) + 74 * 16 = 1219 fits; 75 = 1235 does not.
        let reply = build_answer(&q, &(0..74).map(v4).collect::<Vec<_>>(), 5);
        assert_eq!((field(&reply, 1) & FLAG_TC, field(&reply, 3)), (0, 74));
        let reply = build_answer(&q, &(0..75).map(v4).collect::<Vec<_>>(), 5);
        assert_eq!((field(&reply, 1) & FLAG_TC, field(&reply, 3)), (FLAG_TC, 0));
        assert_eq!(field(&reply, 5), 1, "OPT kept even when truncated");
    }

    #[test]
    fn small_edns_size_means_512() {
        let q = parse_query(&with_edns(query_bytes(1, "a.test", TYPE_A), 100)).unwrap();
        assert_eq!(response_limit(&q), 512);
    }

    #[test]
    fn edns_query_gets_opt_in_reply() {
        let q = parse_query(DIG_EXAMPLE_TEST_A).unwrap();
        let reply = build_answer(&q, &[v4(1)], 5);
        assert_eq!(field(&reply, 5), 1);
        let opt = &reply[reply.len() - 11..];
        assert_eq!(opt, [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn error_replies_echo_question_and_rd() {
        let q = parse_query(DIG_EXAMPLE_TEST_A).unwrap();
        for code in [
            Rcode::NxDomain,
            Rcode::ServFail,
            Rcode::Refused,
            Rcode::NotImp,
        ] {
            let reply = build_error(&q, code);
            assert_eq!(field(&reply, 0), 0x1234);
            assert_eq!(field(&reply, 1), 0x8180 | u16::from(code as u8));
            assert_eq!([field(&reply, 2), field(&reply, 3)], [1, 0]);
            assert_eq!(&reply[12..30], &q.question[..]);
        }

        let mut no_rd = query_bytes(9, "a.test", TYPE_A);
        no_rd[2] = 0;
        let q = parse_query(&no_rd).unwrap();
        assert_eq!(field(&build_error(&q, Rcode::NxDomain), 1), 0x8083);
    }

    #[test]
    fn format_error_needs_a_header() {
        assert_eq!(build_format_error(&[0x12; 11]), None);
        let reply = build_format_error(&[0xab, 0xcd, 0x01, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(
            reply,
            Some(vec![0xab, 0xcd, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn bare_errors_are_not_sent_to_responses() {
        let mut packet = query_bytes(1, "a.test", TYPE_A);
        packet[2] |= 0x80;
        assert_eq!(build_format_error(&packet), None);
    }

    #[test]
    fn notimp_echoes_opcode() {
        let mut packet = query_bytes(3, "a.test", TYPE_A);
        packet[2] = 2 << 3; // STATUS
        let reply = build_bare_error(&packet, Rcode::NotImp).unwrap();
        assert_eq!(field(&reply, 1), 0x8000 | (2 << 11) | 0x0080 | 4);
    }

    /// Cheap deterministic fuzzing: corrupt a real query many ways; parsing
    /// must never panic, and whatever parses must yield replies that fit.
    #[test]
    fn mutated_queries_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut packet = DIG_EXAMPLE_TEST_A.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % packet.len();
                packet[at] = next() as u8;
            }
            packet.truncate((next() as usize) % (packet.len() + 1));
            if let Ok(q) = parse_query(&packet) {
                let reply = build_answer(&q, &[v4(1), v4(2)], 1);
                assert!(reply.len() <= response_limit(&q));
                build_error(&q, Rcode::ServFail);
            }
            build_format_error(&packet);
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            WireError::QuestionCount(2).to_string(),
            "expected exactly one question, found 2"
        );
        assert_eq!(
            WireError::BadLabel(0x40).to_string(),
            "invalid label length byte 0x40"
        );
    }
}
