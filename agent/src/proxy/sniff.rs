//! What host does the client name?
//!
//! The proxy peeks at the first bytes a client sends (without consuming
//! them) to learn the host it claims: the SNI of a TLS ClientHello or the
//! Host of an HTTP/1.x request. Comparing that with the name behind the
//! destination (a synthetic DNS address) catches a workload that connects
//! to an allowed name while asking the server, often a shared CDN front,
//! for another.
//!
//! The parsers are strict where a lenient server could read a different
//! host than we did, and report that as [`Sniffed::Malformed`] rather than
//! [`Sniffed::Unknown`], so callers can deny it.
//!
//! Limits callers must keep in mind:
//! - Only the first request is seen. On a kept-alive HTTP/1.1 connection a
//!   later request may carry another Host; binding every request needs an
//!   L7 proxy. TLS names its server once per connection, but the HTTP Host
//!   inside the encrypted stream is not visible here.
//! - A client that sends nothing until the caller stops waiting can send a
//!   ClientHello or request afterwards; see [`sniff_final`].

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Most bytes worth peeking at: [`sniff`] never asks for more once it has
/// this many. ClientHellos, even with post-quantum key shares, and ordinary
/// request heads are far smaller; it is also the largest request head the
/// proxy serves, so a head the sniffer cannot finish is one too large.
pub const MAX_SNIFF: usize = 64 * 1024;

/// What the first bytes of a client stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A complete TLS ClientHello.
    ///
    /// `sni` is the server_name host_name as sent (unprintable bytes
    /// escaped, so it can never equal a real host name), or `None` when the
    /// hello has no server_name (clients connecting to an IP literal).
    ///
    /// `ech` says the hello carries an encrypted_client_hello extension.
    /// Then `sni` is the outer, public name, and the server picks its host
    /// from the encrypted inner hello. That cannot be told from the GREASE
    /// ECH that Chrome sends on every connection, whose outer name is the
    /// real one, so `sni` is still reported: with real ECH it is the ECH
    /// provider's public name and will not match the name the destination
    /// was looked up as.
    Tls { sni: Option<String>, ech: bool },
    /// A complete HTTP/1.x request head.
    Http { method: String, host: HostHeader },
    /// The HTTP/2 prior-knowledge preface (h2c without upgrade). The host is
    /// in a later HPACK-compressed HEADERS frame, which we do not decode, so
    /// the name cannot be checked.
    Http2,
    /// Starts like TLS or HTTP but breaks its grammar, or does not complete
    /// within [`MAX_SNIFF`] bytes. A lenient server might still read a host
    /// from it, so callers relying on the claimed name should deny.
    Malformed,
    /// Neither TLS nor HTTP (SSH, a database protocol, ...): no host claimed.
    Unknown,
    /// A valid but incomplete prefix of a ClientHello or HTTP/1.x request
    /// head (or nothing at all yet): peek again once more bytes arrive. If
    /// the caller stops waiting, use [`sniff_final`].
    NeedMore,
}

/// The host an HTTP/1.x request names, from its Host header field and its
/// request target (absolute-form `GET http://h/`, or CONNECT's `h:port`).
/// Values are as sent; compare them through [`normalize_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// No Host field and no host in the target (e.g. HTTP/1.0).
    Missing,
    /// One host: the Host field's value (possibly empty), or the target's
    /// host when the Host field is absent or names the same host.
    One(String),
    /// More than one Host field, or a Host field naming another host than
    /// the target. Servers and intermediaries disagree on which one wins,
    /// so the request must be denied.
    Conflicting,
}

/// Classifies the first bytes of a client stream.
///
/// Never panics and never reads past `buf`; looks at most [`MAX_SNIFF`]
/// bytes and never returns [`Sniffed::NeedMore`] once given that many.
pub fn sniff(buf: &[u8]) -> Sniffed {
    let buf = buf.get(..MAX_SNIFF).unwrap_or(buf);
    let sniffed = match buf.first() {
        None => Sniffed::NeedMore,
        Some(&tls::CONTENT_HANDSHAKE) => tls::sniff(buf),
        Some(_) => http::sniff(buf),
    };
    if sniffed == Sniffed::NeedMore && buf.len() >= MAX_SNIFF {
        Sniffed::Malformed
    } else {
        sniffed
    }
}

/// [`sniff`] for when no more bytes will be awaited (peek timeout, EOF):
/// a still-incomplete TLS or HTTP prefix is [`Sniffed::Malformed`], since
/// the client could complete it with any host once relayed. No bytes at all
/// is [`Sniffed::Unknown`] (server-speaks-first protocols such as SMTP);
/// relaying such a connection lets the client name a host later unchecked.
pub fn sniff_final(buf: &[u8]) -> Sniffed {
    match sniff(buf) {
        Sniffed::NeedMore if buf.is_empty() => Sniffed::Unknown,
        Sniffed::NeedMore => Sniffed::Malformed,
        sniffed => sniffed,
    }
}

/// An HTTP/1 request whose head did not end within [`MAX_SNIFF`] bytes
/// (`sniffed` is what [`sniff_final`] made of `buf`): too large, rather
/// than malformed. The request line itself may be what does not fit, so
/// only its opening (a method and whitespace) is required.
pub fn is_oversized_http_head(sniffed: &Sniffed, buf: &[u8]) -> bool {
    *sniffed == Sniffed::Malformed && buf.len() >= MAX_SNIFF && http::opens_like_request(buf)
}

/// Normalises a host for comparison: trims spaces and tabs, drops a
/// `:port` suffix (digits only) and the brackets of an IPv6 literal
/// (writing the address in canonical form), drops one trailing root dot,
/// and lowercases ASCII. Input that fits none of these forms is only
/// trimmed and lowercased, so it will not match a real name.
pub fn normalize_host(raw: &str) -> String {
    let trimmed = raw.trim_matches([' ', '\t']);
    if let Some(bracketed) = trimmed.strip_prefix('[')
        && let Some((inner, after)) = bracketed.split_once(']')
        && (after.is_empty() || after.strip_prefix(':').is_some_and(is_digits))
    {
        return match inner.parse::<Ipv6Addr>() {
            Ok(addr) => addr.to_string(),
            Err(_) => inner.to_ascii_lowercase(),
        };
    }
    let host = match trimmed.rsplit_once(':') {
        // A single colon before digits is a port; more colons make a bare
        // IPv6 address, which has no port.
        Some((host, port)) if !host.contains(':') && is_digits(port) => host,
        _ => trimmed,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    match host.parse::<Ipv6Addr>() {
        Ok(addr) => addr.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Bounds-checked reads from a byte slice: every read returns `None` rather
/// than going past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }

    fn u24(&mut self) -> Option<usize> {
        let &[a, b, c] = self.take(3)? else {
            return None;
        };
        Some(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(len.into())
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(len.into())
    }
}

mod tls {
    //! TLS ClientHello (RFC 8446 §4.1.2, server_name from RFC 6066 §3).

    use super::{Cow, Reader, Sniffed};

    pub(super) const CONTENT_HANDSHAKE: u8 = 0x16;
    const RECORD_HEADER_LEN: usize = 5;
    /// Largest plaintext record allowed (RFC 8446 §5.1).
    const MAX_RECORD_LEN: usize = 1 << 14;
    const HANDSHAKE_HEADER_LEN: usize = 4;
    const CLIENT_HELLO: u8 = 1;
    const EXT_SERVER_NAME: u16 = 0;
    /// encrypted_client_hello (RFC 9849).
    const EXT_ECH: u16 = 0xfe0d;
    const NAME_TYPE_HOST_NAME: u8 = 0;
    const MAX_SESSION_ID_LEN: usize = 32;

    /// `buf` starts with a handshake content type. Reassembles the
    /// handshake message from as many records as it spans.
    pub(super) fn sniff(buf: &[u8]) -> Sniffed {
        let mut rest = buf;
        let mut handshake: Cow<'_, [u8]> = Cow::Borrowed(&[]);
        let mut first = true;
        // A record that is not a handshake record, or not TLS at all: for
        // the first record that means "not TLS", later it breaks the hello.
        let not_tls = |first: bool| {
            if first {
                Sniffed::Unknown
            } else {
                Sniffed::Malformed
            }
        };
        loop {
            let Some((header, body)) = rest.split_at_checked(RECORD_HEADER_LEN) else {
                // Judge what there is of the header; the version's minor
                // byte and the length can be anything yet.
                return match rest {
                    [] | [CONTENT_HANDSHAKE] | [CONTENT_HANDSHAKE, 3, ..] => Sniffed::NeedMore,
                    _ => not_tls(first),
                };
            };
            let &[content_type, major, _minor, len_hi, len_lo] = header else {
                return Sniffed::Malformed; // unreachable: split at 5
            };
            if content_type != CONTENT_HANDSHAKE || major != 3 {
                return not_tls(first);
            }
            let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if len == 0 || len > MAX_RECORD_LEN {
                return Sniffed::Malformed;
            }
            let (fragment, complete) = match body.split_at_checked(len) {
                Some((fragment, after)) => {
                    rest = after;
                    (fragment, true)
                }
                None => (body, false),
            };
            if handshake.is_empty() {
                handshake = Cow::Borrowed(fragment);
            } else {
                handshake.to_mut().extend_from_slice(fragment);
            }
            match client_hello(&handshake) {
                Progress::Done(sniffed) => return sniffed,
                Progress::Incomplete if complete => first = false,
                Progress::Incomplete => return Sniffed::NeedMore,
            }
        }
    }

    enum Progress {
        Done(Sniffed),
        Incomplete,
    }

    /// Judges the handshake bytes gathered so far.
    fn client_hello(handshake: &[u8]) -> Progress {
        let mut reader = Reader::new(handshake);
        match reader.u8() {
            None => return Progress::Incomplete,
            // A client must open with a ClientHello.
            Some(CLIENT_HELLO) => {}
            Some(_) => return Progress::Done(Sniffed::Malformed),
        }
        let Some(len) = reader.u24() else {
            return Progress::Incomplete;
        };
        if len == 0 || len > super::MAX_SNIFF - HANDSHAKE_HEADER_LEN {
            return Progress::Done(Sniffed::Malformed);
        }
        // Bytes after the hello would be another handshake message, which a
        // client may not send before the server answers; ignore them.
        match reader.take(len) {
            Some(body) => Progress::Done(match parse_client_hello(body) {
                Some((sni, ech)) => Sniffed::Tls {
                    sni: sni.map(|name| name.escape_ascii().to_string()),
                    ech,
                },
                None => Sniffed::Malformed,
            }),
            None => Progress::Incomplete,
        }
    }

    /// The host_name and whether ECH is offered; `None` if malformed.
    fn parse_client_hello(body: &[u8]) -> Option<(Option<&[u8]>, bool)> {
        let mut hello = Reader::new(body);
        let _legacy_version = hello.take(2)?;
        let _random = hello.take(32)?;
        if hello.vec8()?.len() > MAX_SESSION_ID_LEN {
            return None;
        }
        let cipher_suites = hello.vec16()?;
        if cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
            return None;
        }
        if hello.vec8()?.is_empty() {
            return None; // no compression method, not even "null"
        }
        if hello.is_empty() {
            return Some((None, false)); // pre-TLS 1.2 hello without extensions
        }
        let mut extensions = Reader::new(hello.vec16()?);
        if !hello.is_empty() {
            return None; // trailing bytes, which servers reject
        }
        let (mut host_name, mut seen_server_name, mut ech) = (None, false, false);
        while !extensions.is_empty() {
            let kind = extensions.u16()?;
            let data = extensions.vec16()?;
            match kind {
                // A repeat is forbidden (RFC 8446 §4.2) and servers differ
                // in which copy they would use.
                EXT_SERVER_NAME if seen_server_name => return None,
                EXT_SERVER_NAME => {
                    seen_server_name = true;
                    host_name = Some(parse_server_name(data)?);
                }
                EXT_ECH => ech = true,
                _ => {}
            }
        }
        Some((host_name, ech))
    }

    /// The one host_name of a server_name extension; `None` if malformed,
    /// empty, or holding several host names (RFC 6066 forbids that, and
    /// servers differ in which one they would use).
    fn parse_server_name(data: &[u8]) -> Option<&[u8]> {
        let mut extension = Reader::new(data);
        let mut list = Reader::new(extension.vec16()?);
        if !extension.is_empty() {
            return None;
        }
        let mut host_name = None;
        while !list.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == NAME_TYPE_HOST_NAME {
                if host_name.is_some() || name.is_empty() {
                    return None;
                }
                host_name = Some(name);
            }
        }
        host_name
    }
}

mod http {
    //! HTTP/1.x request heads (RFC 9112), parsed leniently where servers
    //! are lenient (bare LF line ends, runs of whitespace, odd bytes in the
    //! target) so a request they would serve is not mistaken for non-HTTP.

    use super::{HostHeader, Sniffed, normalize_host};

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// The preface's request line: once seen, anything else is broken h2.
    const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

    pub(super) fn sniff(buf: &[u8]) -> Sniffed {
        let shared = buf.len().min(H2_PREFACE.len());
        if buf.get(..shared) == H2_PREFACE.get(..shared) {
            return if shared == H2_PREFACE.len() {
                Sniffed::Http2
            } else {
                Sniffed::NeedMore
            };
        }
        if buf.starts_with(H2_PREFACE_LINE) {
            return Sniffed::Malformed;
        }

        let buf = after_empty_lines(buf);

        // The method is followed by whitespace; decide early for streams
        // that cannot be HTTP, so they are not held up waiting for more.
        // Methods in use are short and upper case (GET, PROPFIND,
        // M-SEARCH); any other token is treated as another protocol, which
        // costs a spoofer nothing it could not get as opaque bytes.
        let method_len = buf.iter().take_while(|&&b| is_method_char(b)).count();
        if method_len > MAX_METHOD_LEN {
            return Sniffed::Unknown;
        }
        let Some((method, after_method)) = buf.split_at_checked(method_len) else {
            return Sniffed::NeedMore; // unreachable: count <= len
        };
        match after_method.first() {
            None => return Sniffed::NeedMore,
            Some(&b) if method.is_empty() || !is_ws(b) => return Sniffed::Unknown,
            Some(_) => {}
        }
        let Some((line, mut rest)) = split_line(after_method) else {
            return Sniffed::NeedMore;
        };
        // A bare CR could end the line for a lenient server, leaving what
        // follows to be read as headers.
        if line.contains(&b'\r') {
            return Sniffed::Malformed;
        }
        let Some(target) = request_target(line) else {
            // No "HTTP/x.y" at the end: not HTTP/1.x (HTTP/0.9 has no
            // headers, so no Host either).
            return Sniffed::Unknown;
        };
        let Ok(target_host) = target_host(method, target) else {
            return Sniffed::Malformed;
        };

        let mut hosts: Vec<&[u8]> = Vec::new();
        loop {
            let Some((line, after)) = split_line(rest) else {
                return Sniffed::NeedMore;
            };
            rest = after;
            match header(line) {
                Header::End => break,
                Header::Host(value) => hosts.push(value),
                Header::Other => {}
                Header::Bad => return Sniffed::Malformed,
            }
        }
        let header_host = match hosts.as_slice() {
            [] => None,
            [value] if valid_authority(value, true) => Some(ascii(value)),
            [_] => return Sniffed::Malformed,
            [_, _, ..] => {
                return Sniffed::Http {
                    method: ascii(method),
                    host: HostHeader::Conflicting,
                };
            }
        };
        let host = match (target_host, header_host) {
            (None, None) => HostHeader::Missing,
            (Some(host), None) | (None, Some(host)) => HostHeader::One(host),
            (Some(target), Some(header)) if normalize_host(&target) == normalize_host(&header) => {
                HostHeader::One(target)
            }
            (Some(_), Some(_)) => HostHeader::Conflicting,
        };
        Sniffed::Http {
            method: ascii(method),
            host,
        }
    }

    /// The line up to the first LF (without the LF, and without one CR
    /// before it), and what follows; `None` if there is no LF yet.
    fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = buf.iter().position(|&b| b == b'\n')?;
        let (line, rest) = buf.split_at_checked(end)?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some((line, rest.get(1..).unwrap_or_default()))
    }

    /// The target of a request line without its method: whitespace, the
    /// target, whitespace, "HTTP/d.d", optional whitespace. The version is
    /// the last word, so a target with spaces in it (which nginx accepts)
    /// still counts as HTTP.
    fn request_target(line: &[u8]) -> Option<&[u8]> {
        let line = trim_ws(line);
        let split = line.iter().rposition(|&b| is_ws(b))?;
        let (target, version) = line.split_at_checked(split)?;
        let target = trim_ws(target);
        (!target.is_empty() && is_http_version(version.get(1..)?)).then_some(target)
    }

    /// "HTTP/" (any case) DIGIT+ "." DIGIT+.
    fn is_http_version(version: &[u8]) -> bool {
        let Some((name, number)) = version.split_at_checked(5) else {
            return false;
        };
        let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
        name.eq_ignore_ascii_case(b"HTTP/")
            && number
                .iter()
                .position(|&b| b == b'.')
                .and_then(|dot| number.split_at_checked(dot))
                .is_some_and(|(major, minor)| digits(major) && minor.get(1..).is_some_and(digits))
    }

    /// The host a request target names, if any; `Err` for a target no
    /// server should accept, or one whose host could be read two ways.
    fn target_host(method: &[u8], target: &[u8]) -> Result<Option<String>, ()> {
        if target.starts_with(b"/") || target == b"*" {
            return Ok(None); // origin-form, asterisk-form
        }
        if method.eq_ignore_ascii_case(b"CONNECT") {
            // authority-form: host:port, all of it.
            return valid_authority(target, false)
                .then(|| Some(ascii(target)))
                .ok_or(());
        }
        // absolute-form: scheme "://" authority [ "/" | "?" | "#" ...]
        let colon = target.iter().position(|&b| b == b':').ok_or(())?;
        let (scheme, rest) = target.split_at_checked(colon).ok_or(())?;
        let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        let authority_and_path = rest.strip_prefix(b"://").ok_or(())?;
        if !valid_scheme {
            return Err(());
        }
        let end = authority_and_path
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(authority_and_path.len());
        let authority = authority_and_path.get(..end).ok_or(())?;
        // Userinfo ("user@host") and other odd bytes are rejected here.
        valid_authority(authority, false)
            .then(|| Some(ascii(authority)))
            .ok_or(())
    }

    enum Header<'a> {
        End,
        Host(&'a [u8]),
        Other,
        Bad,
    }

    fn header(line: &[u8]) -> Header<'_> {
        if line.is_empty() {
            return Header::End;
        }
        // A bare CR, or a line folded onto the previous one (obs-fold),
        // is read differently by different servers.
        if line.contains(&b'\r') || line.first().is_some_and(|&b| is_ws(b)) {
            return Header::Bad;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Header::Bad;
        };
        let (name, value) = line.split_at(colon);
        // Whitespace before the colon is forbidden (RFC 9112 §5.1): some
        // servers would still take "Host :" as Host.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Header::Bad;
        }
        if name.eq_ignore_ascii_case(b"host") {
            Header::Host(trim_ws(value.get(1..).unwrap_or_default()))
        } else {
            Header::Other
        }
    }

    /// uri-host [ ":" port ] (RFC 3986 §3.2), where uri-host is a bracketed
    /// IPv6 literal or a reg-name/IPv4 address. Commas, userinfo and
    /// whitespace are refused: they are how one value is made to name two
    /// hosts.
    pub(super) fn valid_authority(value: &[u8], allow_empty_host: bool) -> bool {
        let (host_ok, port) = if let Some(bracketed) = value.strip_prefix(b"[") {
            let Some(close) = bracketed.iter().position(|&b| b == b']') else {
                return false;
            };
            let (inner, after) = bracketed.split_at(close);
            let inner_ok = !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
            (inner_ok, after.get(1..).unwrap_or_default())
        } else {
            let colon = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            let (host, port) = value.split_at(colon);
            let host_ok = (allow_empty_host || !host.is_empty())
                && host.iter().all(|&b| {
                    b.is_ascii_alphanumeric()
                        || matches!(
                            b,
                            b'-' | b'.'
                                | b'_'
                                | b'~'
                                | b'%'
                                | b'!'
                                | b'$'
                                | b'&'
                                | b'\''
                                | b'('
                                | b')'
                                | b'*'
                                | b'+'
                                | b';'
                                | b'='
                        )
                });
            (host_ok, port)
        };
        let port_ok = match port.split_first() {
            None => true,
            Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        };
        host_ok && port_ok
    }

    /// RFC 9110 §5.6.2 token characters.
    /// Longest method worth waiting for.
    const MAX_METHOD_LEN: usize = 20;

    /// Servers skip empty lines before the request line (RFC 9112 §2.2),
    /// so a request may hide behind them.
    fn after_empty_lines(buf: &[u8]) -> &[u8] {
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(buf.len());
        buf.get(start..).unwrap_or_default()
    }

    /// Whether `buf` opens like a request line: a method, then whitespace.
    pub(super) fn opens_like_request(buf: &[u8]) -> bool {
        let buf = after_empty_lines(buf);
        let method_len = buf.iter().take_while(|&&b| is_method_char(b)).count();
        (1..=MAX_METHOD_LEN).contains(&method_len) && buf.get(method_len).is_some_and(|&b| is_ws(b))
    }

    fn is_method_char(b: u8) -> bool {
        b.is_ascii_uppercase() || b == b'-' || b == b'_'
    }

    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    fn is_ws(b: u8) -> bool {
        b == b' ' || b == b'\t'
    }

    fn trim_ws(mut bytes: &[u8]) -> &[u8] {
        while let Some((&first, rest)) = bytes.split_first()
            && is_ws(first)
        {
            bytes = rest;
        }
        while let Some((&last, rest)) = bytes.split_last()
            && is_ws(last)
        {
            bytes = rest;
        }
        bytes
    }

    /// Bytes already checked to be ASCII (tokens, authorities).
    fn ascii(bytes: &[u8]) -> String {
        bytes.iter().copied().map(char::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(lines: &[&str]) -> Vec<u8> {
        let hex: String = lines.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// curl 7.88.1 (OpenSSL 3.0) to https://example.com, captured off the
    /// wire: TLS 1.3 ClientHello with SNI, ALPN and padding to 512 bytes.
    fn curl_hello() -> Vec<u8> {
        unhex(&[
            "1603010200010001fc0303f50900326afdb3e558a1c309605c88d959b57f83dc",
            "91fe55bc559c46e182943320ce2b3c26ff3c1bee4d2042198670602f1e7c1182",
            "27361b5765ae487532c96ac1003e130213031301c02cc030009fcca9cca8ccaa",
            "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d",
            "009c003d003c0035002f00ff0100017500000010000e00000b6578616d706c65",
            "2e636f6d000b000403000102000a00160014001d0017001e0019001801000101",
            "0102010301040010000e000c02683208687474702f312e310016000000170000",
            "00310000000d002a0028040305030603080708080809080a080b080408050806",
            "040105010601030303010302040205020602002b000908030403030302030100",
            "2d00020101003300260024001d00204bb01b287334e965dc61c61c39c7b022d9",
            "dd4f7b602c74204b58ae5a41e90f31001500b200000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000",
        ])
    }

    /// `openssl s_client -noservername` (OpenSSL 3.0.19), captured.
    fn openssl_hello_without_sni() -> Vec<u8> {
        unhex(&[
            "160301012401000120030351ed789aaa486a0cfa4db14da42982d6ce7527ac6f",
            "b5469699ff3d352057f18d2001baec9ff8a1bf36e81f13cf8a5d657aa3ca0bc1",
            "059b1d4436aeb0f219887b36003e130213031301c02cc030009fcca9cca8ccaa",
            "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d",
            "009c003d003c0035002f00ff01000099000b000403000102000a00160014001d",
            "0017001e0019001801000101010201030104002300000016000000170000000d",
            "002a0028040305030603080708080809080a080b080408050806040105010601",
            "030303010302040205020602002b0009080304030303020301002d0002010100",
            "3300260024001d0020c77a4bf436054ac8ed1c21cc6cc94212d12e06623f7608",
            "fae9281342d930b623",
        ])
    }

    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// A ClientHello handshake message (no record header) with the given
    /// extensions, each (type, data).
    fn hello_message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0x11; 32]); // session id
        body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
        body.extend_from_slice(&[0x01, 0x00]); // compression: null
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&u16_be(data.len()));
            exts.extend_from_slice(data);
        }
        body.extend_from_slice(&u16_be(exts.len()));
        body.extend_from_slice(&exts);
        let mut message = vec![0x01, 0x00];
        message.extend_from_slice(&u16_be(body.len()));
        message.extend_from_slice(&body);
        message
    }

    /// server_name extension data listing (name_type, name) entries.
    fn server_name(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&u16_be(name.len()));
            list.extend_from_slice(name);
        }
        let mut data = u16_be(list.len()).to_vec();
        data.extend_from_slice(&list);
        data
    }

    /// Wraps a handshake byte stream in records of at most `chunk` bytes.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16_be(part.len()));
            out.extend_from_slice(part);
        }
        out
    }

    fn hello_with_sni(name: &str) -> Vec<u8> {
        let ext = server_name(&[(0, name.as_bytes())]);
        records(
            &hello_message(&[(0x000a, vec![0, 2, 0, 0x1d]), (0, ext)]),
            1 << 14,
        )
    }

    fn tls(sni: Option<&str>) -> Sniffed {
        Sniffed::Tls {
            sni: sni.map(str::to_string),
            ech: false,
        }
    }

    fn http(method: &str, host: HostHeader) -> Sniffed {
        Sniffed::Http {
            method: method.into(),
            host,
        }
    }

    fn one(host: &str) -> HostHeader {
        HostHeader::One(host.into())
    }

    /// Every proper prefix must ask for more; the whole must give `expected`.
    fn assert_prefixes_need_more(bytes: &[u8], expected: &Sniffed) {
        for cut in 0..bytes.len() {
            assert_eq!(sniff(&bytes[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        assert_eq!(&sniff(bytes), expected);
    }

    #[test]
    fn captured_curl_hello_gives_sni() {
        let hello = curl_hello();
        assert_eq!(hello.len(), 517);
        assert_prefixes_need_more(&hello, &tls(Some("example.com")));
    }

    #[test]
    fn captured_hello_without_sni() {
        assert_prefixes_need_more(&openssl_hello_without_sni(), &tls(None));
    }

    #[test]
    fn hello_split_over_records() {
        let message = hello_message(&[(0, server_name(&[(0, b"api.example.test")]))]);
        for chunk in [1, 7, 40, message.len() - 1] {
            assert_prefixes_need_more(&records(&message, chunk), &tls(Some("api.example.test")));
        }
    }

    #[test]
    fn trailing_bytes_after_the_hello_are_ignored() {
        let mut hello = curl_hello();
        hello.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(sniff(&hello), tls(Some("example.com")));
    }

    #[test]
    fn ech_is_flagged_and_outer_name_reported() {
        let message = hello_message(&[
            (0, server_name(&[(0, b"public.ech.test")])),
            (0xfe0d, vec![0; 40]),
        ]);
        assert_eq!(
            sniff(&records(&message, 1 << 14)),
            Sniffed::Tls {
                sni: Some("public.ech.test".into()),
                ech: true
            }
        );
    }

    #[test]
    fn hello_without_extensions() {
        let mut message = hello_message(&[]);
        // Drop the empty extensions block entirely (old clients).
        message.truncate(message.len() - 2);
        let body_len = message.len() - 4;
        message[2..4].copy_from_slice(&u16_be(body_len));
        assert_eq!(sniff(&records(&message, 1 << 14)), tls(None));
    }

    #[test]
    fn odd_sni_bytes_are_escaped() {
        let ext = server_name(&[(0, b"evil.test\0good.test")]);
        let hello = records(&hello_message(&[(0, ext)]), 1 << 14);
        assert_eq!(sniff(&hello), tls(Some(r"evil.test\x00good.test")));
        // Other name types are skipped.
        let ext = server_name(&[(7, b"x"), (0, b"ok.test")]);
        let hello = records(&hello_message(&[(0, ext)]), 1 << 14);
        assert_eq!(sniff(&hello), tls(Some("ok.test")));
    }

    #[test]
    fn ambiguous_or_broken_hellos_are_malformed() {
        let sni = |name: &[u8]| (0u16, server_name(&[(0, name)]));
        let broken: Vec<(&str, Vec<u8>)> = vec![
            (
                "two server_name extensions",
                records(&hello_message(&[sni(b"a.test"), sni(b"b.test")]), 1 << 14),
            ),
            (
                "two host names",
                records(
                    &hello_message(&[(0, server_name(&[(0, b"a.test"), (0, b"b.test")]))]),
                    1 << 14,
                ),
            ),
            (
                "empty host name",
                records(&hello_message(&[sni(b"")]), 1 << 14),
            ),
            (
                "empty server_name list",
                records(&hello_message(&[(0, vec![0, 0])]), 1 << 14),
            ),
            (
                "server_name list longer than its extension",
                records(&hello_message(&[(0, vec![0, 9, 0, 0, 1, b'a'])]), 1 << 14),
            ),
            (
                "not a ClientHello",
                records(&[0x02, 0, 0, 4, 3, 3, 0, 0], 1 << 14),
            ),
            ("zero-length record", vec![0x16, 0x03, 0x01, 0x00, 0x00]),
            ("oversized record", vec![0x16, 0x03, 0x01, 0x40, 0x01]),
            (
                "second record not handshake",
                [
                    records(&hello_message(&[sni(b"a.test")])[..10], 1 << 14),
                    vec![0x17, 0x03, 0x03, 0x00, 0x01, 0x00],
                ]
                .concat(),
            ),
        ];
        for (what, bytes) in broken {
            assert_eq!(sniff(&bytes), Sniffed::Malformed, "{what}");
        }
    }

    #[test]
    fn bad_lengths_inside_the_hello_are_malformed() {
        let good = hello_message(&[(0, server_name(&[(0, b"a.test")]))]);
        let session_id_len = 4 + 2 + 32;
        let cipher_len = session_id_len + 1 + 32;
        // The extension block is last: its length, then one server_name
        // extension (type, length, list length, name type, name length,
        // "a.test").
        let ext_block_len = good.len() - 2 - (2 + 2 + 2 + 1 + 2 + 6);
        let cases: [(usize, &[u8]); 5] = [
            (session_id_len, &[33]),        // session id too long
            (cipher_len, &[0x00, 0x05]),    // odd cipher suite bytes
            (cipher_len, &[0xff, 0xff]),    // past the end
            (ext_block_len, &[0x00, 0x00]), // trailing bytes after extensions
            (ext_block_len, &[0xff, 0xff]), // extensions past the end
        ];
        for (at, bytes) in cases {
            let mut message = good.clone();
            message[at..at + bytes.len()].copy_from_slice(bytes);
            assert_eq!(
                sniff(&records(&message, 1 << 14)),
                Sniffed::Malformed,
                "{bytes:?} at {at}"
            );
        }
    }

    #[test]
    fn corrupting_any_byte_never_panics() {
        for hello in [curl_hello(), records(&curl_hello()[5..], 50)] {
            for at in 0..hello.len() {
                for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                    let mut bytes = hello.clone();
                    bytes[at] = value;
                    let _ = sniff(&bytes);
                    let _ = sniff(&bytes[..at]);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..5_000 {
            let len = usize::try_from(next() % 600).unwrap();
            let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            match round % 3 {
                0 if len >= 2 => bytes[..2].copy_from_slice(&[0x16, 0x03]),
                1 if len >= 4 => bytes[..4].copy_from_slice(b"GET "),
                _ => {}
            }
            let _ = sniff(&bytes);
            let _ = sniff_final(&bytes);
        }
    }

    #[test]
    fn not_tls_after_the_first_byte() {
        assert_eq!(sniff(&[0x16]), Sniffed::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03]), Sniffed::NeedMore);
        assert_eq!(sniff(&[0x16, 0x02]), Sniffed::Unknown);
        assert_eq!(sniff(&[0x16, 0x02, 0x01, 0x00, 0x10]), Sniffed::Unknown);
        // SSLv2-style hello: no SNI possible, and not a TLS record.
        assert_eq!(sniff(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Sniffed::Unknown);
    }

    #[test]
    fn huge_hello_length_is_malformed_at_once() {
        let bytes = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00];
        assert_eq!(sniff(&bytes), Sniffed::Malformed);
    }

    #[test]
    fn sni_case_and_dot_normalise() {
        let Sniffed::Tls { sni: Some(sni), .. } = sniff(&hello_with_sni("API.Example.TEST."))
        else {
            panic!("no SNI");
        };
        assert_eq!(normalize_host(&sni), "api.example.test");
    }

    #[test]
    fn http_request_with_host() {
        let request = b"GET /index.html HTTP/1.1\r\nHost: api.example.test\r\nAccept: */*\r\n\r\n";
        assert_prefixes_need_more(request, &http("GET", one("api.example.test")));
    }

    #[test]
    fn http_host_variants() {
        let cases: [(&[u8], Sniffed); 9] = [
            (
                b"GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
                http("GET", HostHeader::Missing),
            ),
            (
                b"POST /x HTTP/1.1\r\nhOsT:example.test:8080\r\n\r\nbody",
                http("POST", one("example.test:8080")),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: \t example.test \t\r\n\r\n",
                http("GET", one("example.test")),
            ),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", http("GET", one(""))),
            (
                b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
                http("GET", one("[2001:db8::1]:443")),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
                http("GET", HostHeader::Conflicting),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a.test\r\nX: y\r\nhost: b.test\r\n\r\n",
                http("GET", HostHeader::Conflicting),
            ),
            // Bare LF line ends, as lenient servers accept.
            (
                b"GET / HTTP/1.1\nHost: lf.test\n\n",
                http("GET", one("lf.test")),
            ),
            // Runs of whitespace and a space inside the target (nginx).
            (
                b"GET  /a b\tHTTP/1.1 \r\nHost: sp.test\r\n\r\n",
                http("GET", one("sp.test")),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(
                sniff(request),
                expected,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn http_absolute_and_authority_form() {
        let cases: [(&[u8], Sniffed); 6] = [
            (
                b"GET http://Proxy.Test:8080/path?q HTTP/1.1\r\n\r\n",
                http("GET", one("Proxy.Test:8080")),
            ),
            (
                b"GET http://a.test/ HTTP/1.1\r\nHost: A.TEST.:80\r\n\r\n",
                http("GET", one("a.test")),
            ),
            (
                b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
                http("GET", HostHeader::Conflicting),
            ),
            (
                b"GET https://a.test HTTP/1.1\r\nHost: a.test\r\n\r\n",
                http("GET", one("a.test")),
            ),
            (
                b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n",
                http("CONNECT", one("evil.test:443")),
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
                http("OPTIONS", one("a.test")),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(
                sniff(request),
                expected,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn http_ambiguities_are_malformed() {
        let cases: [&[u8]; 13] = [
            b"GET / HTTP/1.1\r\nHost: a.test\r\n b.test\r\n\r\n", // obs-fold
            b"GET / HTTP/1.1\r\n Host: a.test\r\n\r\n",           // leading space
            b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",           // space before colon
            b"GET / HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:80x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb.test\r\n\r\n",
            b"GET / HTTP/1.1\rHost: evil.test\r\n\r\n", // bare CR ends the line?
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET http://good.test@evil.test/ HTTP/1.1\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\n\r\n",
            b"GET relative HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ];
        for request in cases {
            assert_eq!(
                sniff(request),
                Sniffed::Malformed,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn incomplete_http_heads_need_more() {
        let request = b"PUT /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: 3\r\n\r\n";
        assert_prefixes_need_more(request, &http("PUT", one("up.test")));
        let lf_only = b"GET / HTTP/1.1\nHost: lf.test\n\n";
        assert_prefixes_need_more(lf_only, &http("GET", one("lf.test")));
        let leading_empty_lines = b"\r\n\nGET / HTTP/1.1\r\nHost: e.test\r\n\r\n";
        assert_prefixes_need_more(leading_empty_lines, &http("GET", one("e.test")));
    }

    #[test]
    fn non_http_is_unknown() {
        let cases: [&[u8]; 7] = [
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*1\r\n$4\r\nPING\r\n", // Redis RESP
            b"GET /\r\n",            // HTTP/0.9
            b"GET / FTP/1.0\r\n\r\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
            b" GET / HTTP/1.1\r\n",
        ];
        for bytes in cases {
            assert_eq!(
                sniff(bytes),
                Sniffed::Unknown,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn http2_preface() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_prefixes_need_more(preface, &Sniffed::Http2);
        let mut with_frames = preface.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniff(&with_frames), Sniffed::Http2);
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Sniffed::Malformed
        );
    }

    #[test]
    fn limits_turn_need_more_into_malformed() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: ".to_vec();
        head.resize(MAX_SNIFF - 1, b'a');
        assert_eq!(sniff(&head), Sniffed::NeedMore);
        head.push(b'a');
        assert_eq!(sniff(&head), Sniffed::Malformed);
        // Bytes past the limit are not looked at.
        head.extend_from_slice(b"\r\nHost: b.test\r\n\r\n");
        assert_eq!(sniff(&head), Sniffed::Malformed);

        // A token too long for a method is another protocol, not a
        // request to wait for.
        let mut token = vec![b'A'; MAX_SNIFF];
        assert_eq!(sniff(&token), Sniffed::Unknown);
        token.truncate(20);
        assert_eq!(sniff(&token), Sniffed::NeedMore);
        token.push(b'A');
        assert_eq!(sniff(&token), Sniffed::Unknown);
        // Lower-case bytes are not a method: decided at once.
        assert_eq!(sniff(b"x"), Sniffed::Unknown);
        assert_eq!(sniff(b"ping"), Sniffed::Unknown);
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
    }

    #[test]
    fn sniff_final_never_needs_more() {
        assert_eq!(sniff_final(b""), Sniffed::Unknown);
        assert_eq!(sniff_final(b"GET / HTTP/1.1\r\n"), Sniffed::Malformed);
        assert_eq!(sniff_final(&curl_hello()[..100]), Sniffed::Malformed);
        assert_eq!(sniff_final(&curl_hello()), tls(Some("example.com")));
        assert_eq!(sniff_final(b"SSH-2.0-x\r\n"), Sniffed::Unknown);
    }

    #[test]
    fn normalize_host_forms() {
        let cases = [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("example.com:443", "example.com"),
            ("example.com.:8080", "example.com"),
            ("example.com:", "example.com"),
            (" \texample.com\t ", "example.com"),
            ("[2001:DB8::0001]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:DB8::1", "2001:db8::1"),
            ("[fe80::1%25eth0]", "fe80::1%25eth0"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("", ""),
            // Not host[:port]: left alone apart from case.
            ("a.test:8x", "a.test:8x"),
            ("[::1", "[::1"),
            ("[::1]x", "[::1]x"),
            ("a.test..", "a.test."),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_host(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn valid_authorities() {
        for ok in [
            "a.test",
            "a.test:1",
            "a.test:",
            "[::1]:8",
            "10.0.0.1",
            "x_y-z.test",
        ] {
            assert!(http::valid_authority(ok.as_bytes(), false), "{ok}");
        }
        for bad in [
            "", ":80", "[]", "[::1", "[::1]x", "a,b", "a b", "u@h", "h/p", "h:1:2",
        ] {
            assert!(!http::valid_authority(bad.as_bytes(), false), "{bad}");
        }
        assert!(http::valid_authority(b"", true));
    }

    fn oversized(prefix: &[u8]) -> bool {
        is_oversized_http_head(&sniff_final(prefix), prefix)
    }

    #[test]
    fn a_head_that_does_not_fit_the_sniffer_is_oversized_not_malformed() {
        let mut long_target = b"GET /".to_vec();
        long_target.resize(MAX_SNIFF, b'a');
        assert!(oversized(&long_target));
        let mut long_header = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long_header.resize(MAX_SNIFF, b'a');
        assert!(oversized(&long_header));
        // Short, TLS, or no method: not a head too large.
        assert!(!oversized(b"GET / HTTP/1.1\r\nX: a"));
        let mut tls = vec![0x16, 0x03, 0x01];
        tls.resize(MAX_SNIFF, 0);
        assert!(!oversized(&tls));
        let opaque = vec![b'A'; MAX_SNIFF];
        assert!(!oversized(&opaque));
    }
}
