//! Credential placeholders (reference §6.4, §3.4; contract §1 "Providers").
//!
//! The workload holds `openshell:resolve:env:<KEY>` instead of a secret.
//! After policy admits a request (TLS already terminated), [`resolve`]
//! swaps every placeholder in the request head for the real value, but
//! only when the request's host, port and canonical path match one of the
//! credential's bindings. Anything it cannot resolve cleanly fails closed.
//!
//! Pure: no I/O, no clocks. Header values are handled as bytes, so
//! non-UTF-8 values stay opaque and a marker inside them is still found.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::policy::glob;

/// The marker every placeholder starts with.
pub const PREFIX: &str = "openshell:resolve:env:";

/// The whole-token alias OpenShell also hands out (`<prefix>-OPENSHELL-
/// RESOLVE-ENV-<KEY>`). Portcullis never resolves it, so it only ever shows
/// up as a leftover marker.
const ALIAS_MARKER: &str = "openshell-resolve-env-";

/// Longest credential key: one leading character plus 127 more.
const MAX_KEY_LEN: usize = 128;

/// How many layers of percent-encoding the leftover scan peels off. Each
/// layer costs a pass over the text; nothing real nests deeper.
const MAX_DECODE_ROUNDS: usize = 8;

/// How much of a key, method or header name an error message shows.
const MAX_SHOWN_CHARS: usize = 80;

/// The placeholder for `key`.
pub fn placeholder(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// True if `key` may be a credential key: `[A-Za-z_][A-Za-z0-9_]{0,127}`,
/// and not reserved (`v<digits>_...`, `s<64 hex>_...`).
pub fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let Some((&first, _)) = bytes.split_first() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == b'_')
        && bytes.len() <= MAX_KEY_LEN
        && bytes.iter().copied().all(is_key_byte)
        && !is_reserved_key(key)
}

/// OpenShell's revision-scoped (`v<revision>_KEY`) and handle-scoped
/// (`s<64 hex>_KEY`) placeholder forms: such names can never be plain keys.
fn is_reserved_key(key: &str) -> bool {
    let revision_scoped = key.strip_prefix('v').is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest.as_bytes().get(digits) == Some(&b'_')
    });
    let handle_scoped = key.strip_prefix('s').is_some_and(|rest| {
        let bytes = rest.as_bytes();
        bytes
            .get(..64)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            && bytes.get(64) == Some(&b'_')
    });
    revision_scoped || handle_scoped
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// A secret value: the store's type, whose Debug prints `[REDACTED]`.
pub use crate::store::SecretValue as Secret;

/// Where a credential may be sent: one of these endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Lower-case host or host glob (policy host-glob semantics, §1.5),
    /// e.g. `api.github.com` or `*.github.com`.
    pub host: String,
    /// Empty = any port.
    pub ports: Vec<u16>,
    /// Path glob, e.g. `/repos/**`; `None` = any path.
    pub path: Option<String>,
}

impl Binding {
    /// Whether a request to `host:port` at canonical `path` is inside this
    /// binding. A host pattern that policy would refuse to load (bare `*`,
    /// TLD wildcards, ...) matches nothing: a bad binding fails closed.
    pub fn admits(&self, host: &str, port: u16, path: &str) -> bool {
        let host_ok = !self.host.is_empty()
            && glob::host_glob_error(&self.host).is_none()
            && glob::host_matches(&self.host, host);
        let port_ok = self.ports.is_empty() || self.ports.contains(&port);
        let path_ok = self
            .path
            .as_deref()
            .is_none_or(|pattern| glob::path_matches(pattern, path));
        host_ok && port_ok && path_ok
    }
}

#[derive(Clone, Debug)]
pub struct Credential {
    pub key: String,
    pub provider: String,
    pub secret: Secret,
    pub bindings: Vec<Binding>,
}

/// The request as the proxy has it after admission.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    pub scheme_is_tls: bool,
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// canonical path without query (policy already decided on it)
    pub path: &'a str,
    /// the request target as it will be sent upstream (path plus optional
    /// `?query`), canonical form
    pub target: &'a str,
    pub headers: &'a [(String, Vec<u8>)],
}

/// The head to send upstream. Deliberately not `Debug`: it carries secrets.
pub struct Rewritten {
    pub target: String,
    /// Every header of the request, in order; only values that held a
    /// placeholder differ.
    pub headers: Vec<(String, Vec<u8>)>,
    /// keys resolved, for audit (never values)
    pub resolved: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// A known placeholder aimed at a host/port/path outside its bindings
    /// -> 403 credential_endpoint_mismatch (+ FINDING event by caller)
    EndpointMismatch { key: String, provider: String },
    /// A placeholder whose key no attached provider has -> 500 credential_unavailable
    Unavailable { key: String },
    /// A marker remained after rewriting (raw or percent-encoded, any case
    /// of the encoding) -> 403
    LeftoverMarker { location: String },
    /// The secret value contains CR, LF or NUL -> 500 credential_unavailable
    InvalidSecret { key: String },
    /// Placeholders over plain HTTP are never resolved -> 403
    PlainHttp { key: String },
    /// TRACE/TRACK would echo the secret back -> 403
    EchoMethod { method: String },
}

impl ResolveError {
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Unavailable { .. } | Self::InvalidSecret { .. } => 500,
            Self::EndpointMismatch { .. }
            | Self::LeftoverMarker { .. }
            | Self::PlainHttp { .. }
            | Self::EchoMethod { .. } => 403,
        }
    }

    /// The contract's codes (§3.4) only, so OpenShell-aware agents know
    /// them: plain HTTP and echo methods are outside what a credential is
    /// bound to; a leftover marker is a placeholder that cannot be resolved.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::EndpointMismatch { .. } | Self::PlainHttp { .. } | Self::EchoMethod { .. } => {
                "credential_endpoint_mismatch"
            }
            Self::Unavailable { .. } | Self::InvalidSecret { .. } | Self::LeftoverMarker { .. } => {
                "credential_unavailable"
            }
        }
    }

    /// agent-readable message, names the key and the fix, never a secret
    pub fn message(&self) -> String {
        match self {
            Self::EndpointMismatch { key, provider } => format!(
                "credential `{}` of provider `{}` is not bound to this host, port and path, so the \
                 request was not sent. Send the placeholder only to the endpoints the provider \
                 serves, or ask the operator to bind the credential to this endpoint.",
                shown(key),
                shown(provider)
            ),
            Self::Unavailable { key } if is_reserved_key(key) => format!(
                "placeholder `{}` uses a revision- or handle-scoped form, which Portcullis does not \
                 resolve. Use `{PREFIX}<KEY>` with a key listed by GET http://policy.local/v1/providers.",
                shown(&placeholder(key))
            ),
            Self::Unavailable { key } => format!(
                "no attached provider has credential `{}`, so `{}` cannot be resolved. Check the key \
                 against GET http://policy.local/v1/providers, or propose a `requestProvider` \
                 operation to have a provider attached.",
                shown(key),
                shown(&placeholder(key))
            ),
            Self::LeftoverMarker { location } => format!(
                "a credential placeholder marker in {} could not be resolved (misspelt, wrong case, \
                 percent-encoded in a header, alias form, or inside a credential value), so the \
                 request was not sent. Write placeholders exactly as `{PREFIX}<KEY>` with a key of \
                 an attached provider.",
                shown(location)
            ),
            Self::InvalidSecret { key } => format!(
                "the value of credential `{}` contains CR, LF or NUL and cannot be sent safely. Ask \
                 the operator to fix the provider's credential `{}`.",
                shown(key),
                shown(key)
            ),
            Self::PlainHttp { key } => format!(
                "credential placeholder `{}` is only resolved over HTTPS and this request is plain \
                 HTTP, so it was not sent. Use an https:// URL for this endpoint.",
                shown(key)
            ),
            Self::EchoMethod { method } => format!(
                "method `{}` echoes the request back, which would reveal the credential, so \
                 placeholders are never resolved in TRACE or TRACK requests. Use another method.",
                shown(method)
            ),
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ResolveError {}

/// `text` cut to a readable length with control characters escaped: keys,
/// methods and header names come from the workload.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_SHOWN_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Resolves every placeholder in the head; `Ok(None)` when the request
/// carries none (nothing to do).
pub fn resolve(
    head: &RequestHead<'_>,
    credentials: &[Credential],
) -> Result<Option<Rewritten>, ResolveError> {
    let plan = Plan::of(head);
    let keys = plan.keys();
    let Some(&first) = keys.first() else {
        // Nothing resolvable, but a marker we could not parse must still
        // not reach upstream.
        ensure_no_marker(head.target, head.headers)?;
        return Ok(None);
    };
    if !head.scheme_is_tls {
        return Err(ResolveError::PlainHttp { key: first.into() });
    }
    if is_echo_method(head.method) {
        return Err(ResolveError::EchoMethod {
            method: head.method.into(),
        });
    }
    let mut secrets: BTreeMap<&str, &Secret> = BTreeMap::new();
    for &key in &keys {
        secrets.insert(key, &usable_credential(key, head, credentials)?.secret);
    }
    let target = rewrite_target(head.target, &plan.target, &secrets)?;
    let headers = rewrite_headers(head.headers, &plan.headers, &secrets);
    // Catches a secret that itself holds a marker, and markers the
    // parser did not take as placeholders.
    ensure_no_marker(&target, &headers)?;
    Ok(Some(Rewritten {
        target,
        headers,
        resolved: keys.into_iter().map(String::from).collect(),
    }))
}

fn is_echo_method(method: &str) -> bool {
    method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("TRACK")
}

/// The credential for `key`, if it exists, is bound to this request's
/// endpoint and has a value that is safe to put in a request head.
fn usable_credential<'c>(
    key: &str,
    head: &RequestHead<'_>,
    credentials: &'c [Credential],
) -> Result<&'c Credential, ResolveError> {
    // Attachment rejects duplicate keys (§6.2), so the first is the one.
    let credential = credentials
        .iter()
        .find(|c| c.key == key && valid_key(&c.key))
        .ok_or_else(|| ResolveError::Unavailable { key: key.into() })?;
    let bound = credential
        .bindings
        .iter()
        .any(|b| b.admits(head.host, head.port, head.path));
    if !bound {
        return Err(ResolveError::EndpointMismatch {
            key: key.into(),
            provider: credential.provider.clone(),
        });
    }
    // CR/LF would split the head (header injection); NUL truncates in C parsers.
    if credential
        .secret
        .expose()
        .bytes()
        .any(|b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(ResolveError::InvalidSecret { key: key.into() });
    }
    Ok(credential)
}

/// One placeholder in a text: bytes `start..end`, naming `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Occurrence {
    start: usize,
    end: usize,
    key: String,
}

/// Where placeholders sit in one header value.
enum HeaderSite {
    /// In the value as sent.
    Raw(Vec<Occurrence>),
    /// Inside the decoded `user:pass` of `Basic <base64>`.
    Basic {
        /// `Basic` and the spaces after it, as written.
        scheme: Vec<u8>,
        userinfo: Vec<u8>,
        found: Vec<Occurrence>,
    },
}

/// Every placeholder of a request head, found once and used twice: for
/// the checks, then for the rewrite.
struct Plan {
    target: Vec<Occurrence>,
    /// One entry per header; `None` for headers without placeholders.
    headers: Vec<Option<HeaderSite>>,
}

impl Plan {
    fn of(head: &RequestHead<'_>) -> Self {
        Self {
            target: find_placeholders(head.target.as_bytes(), true),
            headers: head.headers.iter().map(|(_, v)| header_site(v)).collect(),
        }
    }

    /// The keys named, deduplicated, in order of first appearance.
    fn keys(&self) -> Vec<&str> {
        let header_occurrences = self.headers.iter().flatten().flat_map(|site| match site {
            HeaderSite::Raw(found) | HeaderSite::Basic { found, .. } => found.iter(),
        });
        let mut keys: Vec<&str> = Vec::new();
        for occurrence in self.target.iter().chain(header_occurrences) {
            if !keys.contains(&occurrence.key.as_str()) {
                keys.push(&occurrence.key);
            }
        }
        keys
    }
}

fn header_site(value: &[u8]) -> Option<HeaderSite> {
    if let Some((scheme, userinfo)) = parse_basic(value) {
        let found = find_placeholders(&userinfo, false);
        if !found.is_empty() {
            return Some(HeaderSite::Basic {
                scheme: scheme.to_vec(),
                userinfo,
                found,
            });
        }
    }
    let found = find_placeholders(value, false);
    (!found.is_empty()).then_some(HeaderSite::Raw(found))
}

/// `Basic <base64>` (scheme any case): the scheme with its spaces, and
/// the decoded token. `None` if the value is not that shape.
fn parse_basic(value: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let value = value.trim_ascii();
    if !value.get(..5)?.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let spaces = value
        .get(5..)?
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if spaces == 0 {
        return None;
    }
    let (scheme, token) = value.split_at(5 + spaces);
    Some((scheme, base64_decode(token)?))
}

/// Every placeholder in `text`, left to right. With `percent_encoded`
/// (the request target), any byte of the marker or key may also be written
/// `%XX`, hex in either case; header values take the marker raw only, since
/// nothing says how a header would encode the secret.
fn find_placeholders(text: &[u8], percent_encoded: bool) -> Vec<Occurrence> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < text.len() {
        match placeholder_at(text, at, percent_encoded) {
            Some(occurrence) => {
                at = occurrence.end;
                found.push(occurrence);
            }
            None => at += 1,
        }
    }
    found
}

/// The placeholder starting exactly at `start`: the marker, then the
/// maximal run of key characters (at least one).
fn placeholder_at(text: &[u8], start: usize, percent_encoded: bool) -> Option<Occurrence> {
    let mut at = start;
    for &want in PREFIX.as_bytes() {
        let (byte, len) = logical_byte(text, at, percent_encoded)?;
        if byte != want {
            return None;
        }
        at += len;
    }
    let mut key = String::new();
    while let Some((byte, len)) = logical_byte(text, at, percent_encoded)
        && is_key_byte(byte)
    {
        key.push(char::from(byte));
        at += len;
    }
    (!key.is_empty()).then_some(Occurrence {
        start,
        end: at,
        key,
    })
}

/// The byte at `at` and how many input bytes it took: `%XX` decodes when
/// `percent_encoded`, anything else stands for itself.
fn logical_byte(text: &[u8], at: usize, percent_encoded: bool) -> Option<(u8, usize)> {
    let byte = *text.get(at)?;
    if percent_encoded
        && byte == b'%'
        && let Some(decoded) = percent_escape_at(text, at)
    {
        return Some((decoded, 3));
    }
    Some((byte, 1))
}

/// The byte `%XX` at `at` stands for, if it is one.
fn percent_escape_at(text: &[u8], at: usize) -> Option<u8> {
    if text.get(at) != Some(&b'%') {
        return None;
    }
    let high = hex_value(*text.get(at + 1)?)?;
    let low = hex_value(*text.get(at + 2)?)?;
    Some(high << 4 | low)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `text` with each occurrence replaced by `replacement(secret)`. An
/// occurrence without a secret (cannot happen after the checks) keeps its
/// marker, which the leftover scan then rejects.
fn splice(
    text: &[u8],
    found: &[Occurrence],
    secrets: &BTreeMap<&str, &Secret>,
    replacement: impl Fn(&Secret) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut from = 0;
    for occurrence in found {
        let (Some(before), Some(original)) = (
            text.get(from..occurrence.start),
            text.get(occurrence.start..occurrence.end),
        ) else {
            continue;
        };
        out.extend_from_slice(before);
        match secrets.get(occurrence.key.as_str()) {
            Some(secret) => out.extend_from_slice(&replacement(secret)),
            None => out.extend_from_slice(original),
        }
        from = occurrence.end;
    }
    out.extend_from_slice(text.get(from..).unwrap_or_default());
    out
}

/// The target with secrets percent-encoded in place. Path and query take
/// the same encoding: only unreserved characters stay literal, so a secret
/// can never add a segment, a query, a parameter or a fragment.
fn rewrite_target(
    target: &str,
    found: &[Occurrence],
    secrets: &BTreeMap<&str, &Secret>,
) -> Result<String, ResolveError> {
    let bytes = splice(target.as_bytes(), found, secrets, |secret| {
        percent_encode(secret.expose())
    });
    // Replaced spans are ASCII and the inserted text is ASCII, so this is
    // UTF-8; should it ever not be, refuse rather than guess.
    String::from_utf8(bytes).map_err(|_| ResolveError::LeftoverMarker {
        location: "the request target".into(),
    })
}

fn rewrite_headers(
    headers: &[(String, Vec<u8>)],
    sites: &[Option<HeaderSite>],
    secrets: &BTreeMap<&str, &Secret>,
) -> Vec<(String, Vec<u8>)> {
    let raw = |secret: &Secret| secret.expose().as_bytes().to_vec();
    headers
        .iter()
        .zip(sites)
        .map(|((name, value), site)| {
            let value = match site {
                None => value.clone(),
                Some(HeaderSite::Raw(found)) => splice(value, found, secrets, raw),
                Some(HeaderSite::Basic {
                    scheme,
                    userinfo,
                    found,
                }) => {
                    let userinfo = splice(userinfo, found, secrets, raw);
                    [scheme.as_slice(), base64_encode(&userinfo).as_bytes()].concat()
                }
            };
            (name.clone(), value)
        })
        .collect()
}

/// RFC 3986 unreserved characters stay; every other byte becomes `%XX`.
fn percent_encode(value: &str) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0x0f)],
            ]);
        }
    }
    out
}

/// Fails if any marker is left anywhere in the head: target, header names,
/// header values, and the decoded credentials of `Basic` values.
fn ensure_no_marker(target: &str, headers: &[(String, Vec<u8>)]) -> Result<(), ResolveError> {
    let leftover = |location: String| Err(ResolveError::LeftoverMarker { location });
    if has_marker(target.as_bytes()) {
        return leftover("the request target".into());
    }
    for (name, value) in headers {
        if has_marker(name.as_bytes()) {
            return leftover(format!("a header name (`{name}`)"));
        }
        if has_marker(value) {
            return leftover(format!("header `{name}`"));
        }
        if let Some((_, userinfo)) = parse_basic(value)
            && has_marker(&userinfo)
        {
            return leftover(format!("the Basic credentials of header `{name}`"));
        }
    }
    Ok(())
}

/// Whether `text` holds a marker (the prefix or the alias form), in any
/// case, raw or under up to [`MAX_DECODE_ROUNDS`] layers of
/// percent-encoding.
fn has_marker(text: &[u8]) -> bool {
    let mut current = Cow::Borrowed(text);
    for _ in 0..=MAX_DECODE_ROUNDS {
        if contains_ignore_case(&current, PREFIX.as_bytes())
            || contains_ignore_case(&current, ALIAS_MARKER.as_bytes())
        {
            return true;
        }
        match percent_decode(&current) {
            Some(decoded) => current = Cow::Owned(decoded),
            None => return false,
        }
    }
    false
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// One layer of percent-decoding; `None` if there is no `%XX` to decode.
fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut decoded_any = false;
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        match percent_escape_at(text, at) {
            Some(decoded) => {
                out.push(decoded);
                decoded_any = true;
                at += 3;
            }
            None => {
                out.push(byte);
                at += 1;
            }
        }
    }
    decoded_any.then_some(out)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as `Basic` uses.
fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // A chunk of k bytes carries k + 1 sextets; the rest is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (n >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(BASE64_ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` for anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let unpadded = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let padded = unpadded.len() != text.len();
    if (padded && !text.len().is_multiple_of(4)) || unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    for chunk in unpadded.chunks(4) {
        let mut n: u32 = 0;
        for &c in chunk {
            let sextet = BASE64_ALPHABET.iter().position(|&a| a == c)?;
            n = n << 6 | sextet as u32;
        }
        n <<= 6 * (4 - chunk.len());
        let bytes = n.to_be_bytes();
        // 4 sextets carry 3 bytes, 3 carry 2, 2 carry 1.
        out.extend_from_slice(bytes.get(1..chunk.len())?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GH_SECRET: &str = "ghp_S3cretValue42";

    fn binding(host: &str, ports: &[u16], path: Option<&str>) -> Binding {
        Binding {
            host: host.into(),
            ports: ports.to_vec(),
            path: path.map(String::from),
        }
    }

    fn credential(key: &str, secret: &str, bindings: Vec<Binding>) -> Credential {
        Credential {
            key: key.into(),
            provider: format!("{}-provider", key.to_ascii_lowercase()),
            secret: Secret::new(secret),
            bindings,
        }
    }

    fn github() -> Credential {
        Credential {
            key: "GITHUB_TOKEN".into(),
            provider: "github".into(),
            secret: Secret::new(GH_SECRET),
            bindings: vec![binding("api.github.com", &[443], Some("/repos/**"))],
        }
    }

    fn header(name: &str, value: impl AsRef<[u8]>) -> (String, Vec<u8>) {
        (name.into(), value.as_ref().to_vec())
    }

    fn request<'a>(target: &'a str, headers: &'a [(String, Vec<u8>)]) -> RequestHead<'a> {
        RequestHead {
            scheme_is_tls: true,
            method: "GET",
            host: "api.github.com",
            port: 443,
            path: target.split('?').next().unwrap_or(target),
            target,
            headers,
        }
    }

    fn ok(result: Result<Option<Rewritten>, ResolveError>) -> Rewritten {
        match result {
            Ok(Some(rewritten)) => rewritten,
            Ok(None) => panic!("expected a rewrite, got nothing to do"),
            Err(e) => panic!("expected a rewrite, got {e:?}"),
        }
    }

    fn err(result: Result<Option<Rewritten>, ResolveError>) -> ResolveError {
        match result {
            Err(e) => e,
            Ok(Some(_)) => panic!("expected an error, got a rewrite"),
            Ok(None) => panic!("expected an error, got nothing to do"),
        }
    }

    fn value_of<'r>(rewritten: &'r Rewritten, name: &str) -> &'r [u8] {
        rewritten
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .expect("header present")
    }

    fn basic(userinfo: &str) -> String {
        format!("Basic {}", base64_encode(userinfo.as_bytes()))
    }

    fn basic_userinfo(value: &[u8]) -> String {
        let (_, userinfo) = parse_basic(value).expect("Basic value");
        String::from_utf8(userinfo).expect("utf-8")
    }

    #[test]
    fn placeholder_and_prefix() {
        assert_eq!(
            placeholder("GITHUB_TOKEN"),
            "openshell:resolve:env:GITHUB_TOKEN"
        );
        assert!(placeholder("K").starts_with(PREFIX));
    }

    #[test]
    fn key_grammar() {
        for good in [
            "GITHUB_TOKEN",
            "_x",
            "a",
            "v_TOKEN",
            "vX_1",
            "s_abc",
            "v1",
            &"K".repeat(128),
        ] {
            assert!(valid_key(good), "{good}");
        }
        let handle = format!("s{}_KEY", "ab12".repeat(16));
        for bad in [
            "",
            "1KEY",
            "KEY-X",
            "KEY X",
            "ключ",
            "v1_KEY",
            "v123_",
            &handle,
            &"K".repeat(129),
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        // 63 hex digits is not a handle.
        assert!(valid_key(&format!("s{}_KEY", "a".repeat(63))));
    }

    #[test]
    fn bearer_header_is_resolved() {
        let headers = [
            header("Authorization", "Bearer openshell:resolve:env:GITHUB_TOKEN"),
            header("Accept", "application/json"),
        ];
        let out = ok(resolve(&request("/repos/a/b", &headers), &[github()]));
        assert_eq!(
            value_of(&out, "authorization"),
            format!("Bearer {GH_SECRET}").as_bytes()
        );
        assert_eq!(value_of(&out, "accept"), b"application/json");
        assert_eq!(out.target, "/repos/a/b");
        assert_eq!(out.resolved, vec!["GITHUB_TOKEN".to_string()]);
    }

    #[test]
    fn custom_header_is_resolved_anywhere_in_the_value() {
        let headers = [header(
            "X-Api-Key",
            "pre-openshell:resolve:env:GITHUB_TOKEN-post",
        )];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(
            value_of(&out, "x-api-key"),
            format!("pre-{GH_SECRET}-post").as_bytes()
        );
    }

    #[test]
    fn basic_user_then_placeholder() {
        let headers = [header(
            "Authorization",
            basic("x-access-token:openshell:resolve:env:GITHUB_TOKEN"),
        )];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        let value = value_of(&out, "authorization");
        assert!(value.starts_with(b"Basic "));
        assert_eq!(basic_userinfo(value), format!("x-access-token:{GH_SECRET}"));
    }

    #[test]
    fn basic_placeholder_then_x_oauth_basic() {
        let headers = [header(
            "authorization",
            format!(
                "basic  {}",
                base64_encode(b"openshell:resolve:env:GITHUB_TOKEN:x-oauth-basic")
            ),
        )];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        let value = value_of(&out, "authorization");
        assert!(value.starts_with(b"basic  "), "scheme kept as written");
        assert_eq!(basic_userinfo(value), format!("{GH_SECRET}:x-oauth-basic"));
    }

    #[test]
    fn raw_path_segment_is_resolved() {
        let target = "/repos/openshell:resolve:env:GITHUB_TOKEN/issues";
        let out = ok(resolve(&request(target, &[]), &[github()]));
        assert_eq!(out.target, format!("/repos/{GH_SECRET}/issues"));
    }

    #[test]
    fn percent_encoded_path_segment_is_resolved_in_any_hex_case() {
        for target in [
            "/repos/openshell%3Aresolve%3Aenv%3AGITHUB_TOKEN/issues",
            "/repos/openshell%3aresolve%3aenv%3aGITHUB%5fTOKEN/issues",
        ] {
            let out = ok(resolve(&request(target, &[]), &[github()]));
            assert_eq!(out.target, format!("/repos/{GH_SECRET}/issues"), "{target}");
        }
    }

    #[test]
    fn placeholder_inside_a_segment() {
        let bot = credential(
            "TG_TOKEN",
            "123:abc",
            vec![binding("api.telegram.org", &[], Some("/bot*/**"))],
        );
        let mut head = request("/botopenshell:resolve:env:TG_TOKEN/getMe", &[]);
        head.host = "api.telegram.org";
        let out = ok(resolve(&head, &[bot]));
        assert_eq!(out.target, "/bot123%3Aabc/getMe");
    }

    #[test]
    fn query_value_is_resolved() {
        let target = "/repos/x?per_page=5&token=openshell:resolve:env:GITHUB_TOKEN&q=1";
        let out = ok(resolve(&request(target, &[]), &[github()]));
        assert_eq!(
            out.target,
            format!("/repos/x?per_page=5&token={GH_SECRET}&q=1")
        );
    }

    #[test]
    fn two_keys_in_one_request() {
        let other = credential(
            "OTHER_KEY",
            "other-secret",
            vec![binding("*.github.com", &[], None)],
        );
        let headers = [
            header("Authorization", "Bearer openshell:resolve:env:GITHUB_TOKEN"),
            header("X-Other", "openshell:resolve:env:OTHER_KEY"),
            header("X-Again", "openshell:resolve:env:GITHUB_TOKEN"),
        ];
        let target = "/repos/x?k=openshell%3Aresolve%3Aenv%3AOTHER_KEY";
        let out = ok(resolve(&request(target, &headers), &[github(), other]));
        assert_eq!(out.target, "/repos/x?k=other-secret");
        assert_eq!(value_of(&out, "x-other"), b"other-secret");
        assert_eq!(value_of(&out, "x-again"), GH_SECRET.as_bytes());
        assert_eq!(
            out.resolved,
            vec!["OTHER_KEY".to_string(), "GITHUB_TOKEN".to_string()]
        );
    }

    #[test]
    fn key_is_the_maximal_word_run() {
        let headers = [header(
            "X",
            "openshell:resolve:env:GITHUB_TOKEN-x.openshell:resolve:env:GITHUB_TOKEN",
        )];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(
            value_of(&out, "x"),
            format!("{GH_SECRET}-x.{GH_SECRET}").as_bytes()
        );
        // A longer run is a different key.
        let headers = [header("X", "openshell:resolve:env:GITHUB_TOKENS")];
        assert_eq!(
            err(resolve(&request("/repos/x", &headers), &[github()])),
            ResolveError::Unavailable {
                key: "GITHUB_TOKENS".into()
            }
        );
    }

    #[test]
    fn wildcard_binding_matches_exactly_one_label() {
        let cred = credential("K", "v", vec![binding("*.github.com", &[443], None)]);
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        for (host, admitted) in [
            ("api.github.com", true),
            ("API.GitHub.com", true),
            ("github.com", false),
            ("a.b.github.com", false),
            ("api.github.com.evil", false),
        ] {
            let mut head = request("/", &headers);
            head.host = host;
            let result = resolve(&head, std::slice::from_ref(&cred));
            assert_eq!(result.is_ok(), admitted, "{host}");
        }
    }

    #[test]
    fn port_mismatch() {
        let headers = [header(
            "Authorization",
            "Bearer openshell:resolve:env:GITHUB_TOKEN",
        )];
        let mut head = request("/repos/x", &headers);
        head.port = 8443;
        assert_eq!(
            err(resolve(&head, &[github()])),
            ResolveError::EndpointMismatch {
                key: "GITHUB_TOKEN".into(),
                provider: "github".into()
            }
        );
    }

    #[test]
    fn path_mismatch() {
        let headers = [header(
            "Authorization",
            "Bearer openshell:resolve:env:GITHUB_TOKEN",
        )];
        for path in ["/user", "/repos", "/reposx/a"] {
            let e = err(resolve(&request(path, &headers), &[github()]));
            assert!(matches!(e, ResolveError::EndpointMismatch { .. }), "{path}");
        }
    }

    #[test]
    fn host_mismatch() {
        let headers = [header(
            "Authorization",
            "Bearer openshell:resolve:env:GITHUB_TOKEN",
        )];
        let mut head = request("/repos/x", &headers);
        head.host = "evil.example.com";
        let e = err(resolve(&head, &[github()]));
        assert_eq!(
            e,
            ResolveError::EndpointMismatch {
                key: "GITHUB_TOKEN".into(),
                provider: "github".into()
            }
        );
        assert_eq!(e.http_status(), 403);
        assert_eq!(e.error_code(), "credential_endpoint_mismatch");
    }

    #[test]
    fn any_port_and_any_path_bindings() {
        let cred = credential("K", "v", vec![binding("api.example.com", &[], None)]);
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        let mut head = request("/any/where?x=1", &headers);
        head.host = "api.example.com";
        head.port = 8080;
        assert!(resolve(&head, std::slice::from_ref(&cred)).is_ok());
        let star_star = credential(
            "K",
            "v",
            vec![binding("api.example.com", &[1, 8080], Some("**"))],
        );
        assert!(resolve(&head, &[star_star]).is_ok());
    }

    #[test]
    fn unbound_or_badly_bound_credentials_fail_closed() {
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        for bindings in [
            vec![],
            vec![binding("**", &[], None)],
            vec![binding("*", &[], None)],
            vec![binding("", &[], None)],
        ] {
            let cred = credential("K", "v", bindings.clone());
            let e = err(resolve(&request("/", &headers), &[cred]));
            assert!(
                matches!(e, ResolveError::EndpointMismatch { .. }),
                "{bindings:?}"
            );
        }
    }

    #[test]
    fn unknown_key_is_unavailable() {
        let headers = [header("Authorization", "Bearer openshell:resolve:env:NOPE")];
        let e = err(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(e, ResolveError::Unavailable { key: "NOPE".into() });
        assert_eq!(e.http_status(), 500);
        assert_eq!(e.error_code(), "credential_unavailable");
        assert!(e.message().contains("NOPE"));
    }

    #[test]
    fn reserved_placeholder_forms_are_unavailable_with_a_hint() {
        let headers = [header("X", "openshell:resolve:env:v3_GITHUB_TOKEN")];
        let e = err(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(
            e,
            ResolveError::Unavailable {
                key: "v3_GITHUB_TOKEN".into()
            }
        );
        assert!(e.message().contains("revision- or handle-scoped"));
        // A credential stored under a reserved name is never used.
        let reserved = credential(
            "v3_GITHUB_TOKEN",
            "x",
            vec![binding("api.github.com", &[], None)],
        );
        assert!(matches!(
            err(resolve(&request("/repos/x", &headers), &[reserved])),
            ResolveError::Unavailable { .. }
        ));
    }

    #[test]
    fn plain_http_is_refused_before_anything_else() {
        let headers = [header("Authorization", "Bearer openshell:resolve:env:NOPE")];
        let mut head = request("/repos/x", &headers);
        head.scheme_is_tls = false;
        let e = err(resolve(&head, &[github()]));
        assert_eq!(e, ResolveError::PlainHttp { key: "NOPE".into() });
        assert_eq!(e.http_status(), 403);
    }

    #[test]
    fn trace_and_track_are_refused_in_any_case() {
        let headers = [header(
            "Authorization",
            "Bearer openshell:resolve:env:GITHUB_TOKEN",
        )];
        for method in ["TRACE", "trace", "Track"] {
            let mut head = request("/repos/x", &headers);
            head.method = method;
            let e = err(resolve(&head, &[github()]));
            assert_eq!(
                e,
                ResolveError::EchoMethod {
                    method: method.into()
                }
            );
            assert_eq!(e.http_status(), 403);
        }
        // Without a placeholder TRACE is none of this module's business.
        let mut head = request("/repos/x", &[]);
        head.method = "TRACE";
        assert!(matches!(resolve(&head, &[github()]), Ok(None)));
    }

    #[test]
    fn secrets_with_cr_lf_or_nul_are_refused() {
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        for secret in [
            "bad\rvalue",
            "bad\nvalue",
            "bad\0value",
            "bad\r\nX-Injected: 1",
        ] {
            let cred = credential("K", secret, vec![binding("api.github.com", &[], None)]);
            let e = err(resolve(&request("/", &headers), &[cred]));
            assert_eq!(e, ResolveError::InvalidSecret { key: "K".into() });
            assert_eq!(e.http_status(), 500);
            assert_eq!(e.error_code(), "credential_unavailable");
        }
    }

    #[test]
    fn secret_holding_a_marker_is_a_leftover() {
        let cred = credential(
            "K",
            "openshell:resolve:env:GITHUB_TOKEN",
            vec![binding("api.github.com", &[], None)],
        );
        let creds = [cred, github()];
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        let e = err(resolve(&request("/repos/x", &headers), &creds));
        assert_eq!(
            e,
            ResolveError::LeftoverMarker {
                location: "header `X-Key`".into()
            }
        );
        assert_eq!(e.http_status(), 403);
        // In the target the secret is percent-encoded; the scan decodes.
        let e = err(resolve(
            &request("/repos/openshell:resolve:env:K", &[]),
            &creds,
        ));
        assert_eq!(
            e,
            ResolveError::LeftoverMarker {
                location: "the request target".into()
            }
        );
        // Inside Basic credentials too.
        let headers = [header("Authorization", basic("u:openshell:resolve:env:K"))];
        let e = err(resolve(&request("/repos/x", &headers), &creds));
        assert!(
            matches!(e, ResolveError::LeftoverMarker { location } if location.contains("Basic"))
        );
    }

    #[test]
    fn unparsed_markers_are_leftovers() {
        for value in [
            "Bearer OPENSHELL:RESOLVE:ENV:GITHUB_TOKEN",
            "Bearer openshell:resolve:env:",
            "Bearer openshell:resolve:env:-x",
            "Bearer openshell%3Aresolve%3Aenv%3AGITHUB_TOKEN",
            "Bearer ghp-OPENSHELL-RESOLVE-ENV-GITHUB_TOKEN",
        ] {
            let headers = [header("Authorization", value)];
            let e = err(resolve(&request("/repos/x", &headers), &[github()]));
            assert!(matches!(e, ResolveError::LeftoverMarker { .. }), "{value}");
        }
        for target in [
            "/repos/openshell%253Aresolve%253Aenv%253AGITHUB_TOKEN",
            "/repos/OpenShell%3aResolve%3aEnv%3aX",
            "/repos/x?a=openshell:resolve:env:",
        ] {
            let e = err(resolve(&request(target, &[]), &[github()]));
            assert!(matches!(e, ResolveError::LeftoverMarker { .. }), "{target}");
        }
        // A marker left beside a resolved placeholder is caught too.
        let headers = [
            header("Authorization", "Bearer openshell:resolve:env:GITHUB_TOKEN"),
            header("X-Other", "OPENSHELL:resolve:env:GITHUB_TOKEN"),
        ];
        let e = err(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(
            e,
            ResolveError::LeftoverMarker {
                location: "header `X-Other`".into()
            }
        );
    }

    #[test]
    fn special_characters_of_a_secret_are_percent_encoded_in_the_target() {
        let cred = credential(
            "K",
            "a/b?c&d e#f%g~h.i-j_k",
            vec![binding("api.github.com", &[], None)],
        );
        let target = "/v1/openshell:resolve:env:K/x?token=openshell%3Aresolve%3Aenv%3AK&n=1";
        let out = ok(resolve(&request(target, &[]), &[cred]));
        let encoded = "a%2Fb%3Fc%26d%20e%23f%25g~h.i-j_k";
        assert_eq!(out.target, format!("/v1/{encoded}/x?token={encoded}&n=1"));
    }

    #[test]
    fn non_ascii_secret_is_utf8_percent_encoded_in_the_target_and_raw_in_headers() {
        let cred = credential("K", "é", vec![binding("api.github.com", &[], None)]);
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        let out = ok(resolve(
            &request("/a/openshell:resolve:env:K", &headers),
            &[cred],
        ));
        assert_eq!(out.target, "/a/%C3%A9");
        assert_eq!(value_of(&out, "x-key"), "é".as_bytes());
    }

    #[test]
    fn no_placeholders_means_nothing_to_do() {
        let headers = [
            header("Authorization", "Bearer real-token"),
            header("Cookie", "openshell=resolve; env=1"),
            header("X-Bin", [0xff, 0xfe, b'o', 0x00]),
        ];
        assert!(matches!(
            resolve(&request("/repos/a?b=c%3A", &headers), &[github()]),
            Ok(None)
        ));
        let mut head = request("/", &[]);
        head.scheme_is_tls = false;
        assert!(matches!(resolve(&head, &[]), Ok(None)));
    }

    #[test]
    fn non_utf8_header_bytes_are_opaque() {
        let mut value = vec![0xff, 0xc3, b' '];
        value.extend_from_slice(b"openshell:resolve:env:GITHUB_TOKEN");
        value.push(0x80);
        let headers = [header("X-Bin", &value), header("X-Untouched", [0xfe, 0xff])];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        let mut expected = vec![0xff, 0xc3, b' '];
        expected.extend_from_slice(GH_SECRET.as_bytes());
        expected.push(0x80);
        assert_eq!(value_of(&out, "x-bin"), expected.as_slice());
        assert_eq!(value_of(&out, "x-untouched"), &[0xfe, 0xff]);
        // A mangled marker in non-UTF-8 bytes is still found.
        let mut value = vec![0xff];
        value.extend_from_slice(b"OpenShell:Resolve:Env:GITHUB_TOKEN");
        let headers = [header("X-Bin", &value)];
        assert!(matches!(
            err(resolve(&request("/repos/x", &headers), &[github()])),
            ResolveError::LeftoverMarker { .. }
        ));
    }

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let secret = Secret::new(GH_SECRET);
        assert_eq!(format!("{secret:?}"), "[REDACTED]");
        assert_eq!(format!("{secret}"), "[REDACTED]");
        assert_eq!(secret.expose(), GH_SECRET);
        let debug = format!("{:?} {:#?}", github(), github());
        assert!(!debug.contains(GH_SECRET), "{debug}");
        assert!(debug.contains("GITHUB_TOKEN") && debug.contains("[REDACTED]"));
    }

    #[test]
    fn messages_never_contain_the_secret() {
        let secret = "Zz-SECRET-VALUE-zZ";
        let bound = |s: &str| {
            credential(
                "K",
                s,
                vec![binding("api.github.com", &[443], Some("/ok/**"))],
            )
        };
        let headers = [header("X-Key", "openshell:resolve:env:K")];
        let mut errors: Vec<ResolveError> = Vec::new();
        // EndpointMismatch
        errors.push(err(resolve(&request("/nope", &headers), &[bound(secret)])));
        // Unavailable
        errors.push(err(resolve(&request("/ok/1", &headers), &[])));
        // InvalidSecret
        let bad = format!("{secret}\r\n");
        errors.push(err(resolve(&request("/ok/1", &headers), &[bound(&bad)])));
        // LeftoverMarker (secret holds a marker)
        let marked = format!("{secret}openshell:resolve:env:K");
        errors.push(err(resolve(&request("/ok/1", &headers), &[bound(&marked)])));
        // PlainHttp
        let mut head = request("/ok/1", &headers);
        head.scheme_is_tls = false;
        errors.push(err(resolve(&head, &[bound(secret)])));
        // EchoMethod
        let mut head = request("/ok/1", &headers);
        head.method = "TRACE";
        errors.push(err(resolve(&head, &[bound(secret)])));

        let kinds: Vec<&str> = errors
            .iter()
            .map(|e| match e {
                ResolveError::EndpointMismatch { .. } => "mismatch",
                ResolveError::Unavailable { .. } => "unavailable",
                ResolveError::InvalidSecret { .. } => "invalid",
                ResolveError::LeftoverMarker { .. } => "leftover",
                ResolveError::PlainHttp { .. } => "plain",
                ResolveError::EchoMethod { .. } => "echo",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "mismatch",
                "unavailable",
                "invalid",
                "leftover",
                "plain",
                "echo"
            ]
        );
        for e in &errors {
            for text in [e.message(), e.to_string(), format!("{e:?}")] {
                assert!(!text.contains("SECRET-VALUE"), "{text}");
            }
            assert!(!e.message().is_empty());
            if !matches!(
                e,
                ResolveError::LeftoverMarker { .. } | ResolveError::EchoMethod { .. }
            ) {
                assert!(
                    e.message().contains("`K`"),
                    "names the key: {}",
                    e.message()
                );
            }
        }
    }

    #[test]
    fn status_and_code_table() {
        let k = || "K".to_string();
        let table = [
            (
                ResolveError::EndpointMismatch {
                    key: k(),
                    provider: "p".into(),
                },
                403,
                "credential_endpoint_mismatch",
            ),
            (
                ResolveError::Unavailable { key: k() },
                500,
                "credential_unavailable",
            ),
            (
                ResolveError::LeftoverMarker {
                    location: "x".into(),
                },
                403,
                "credential_unavailable",
            ),
            (
                ResolveError::InvalidSecret { key: k() },
                500,
                "credential_unavailable",
            ),
            (
                ResolveError::PlainHttp { key: k() },
                403,
                "credential_endpoint_mismatch",
            ),
            (
                ResolveError::EchoMethod {
                    method: "TRACE".into(),
                },
                403,
                "credential_endpoint_mismatch",
            ),
        ];
        for (e, status, code) in table {
            assert_eq!((e.http_status(), e.error_code()), (status, code), "{e:?}");
        }
    }

    #[test]
    fn messages_escape_and_shorten_workload_text() {
        let e = ResolveError::EchoMethod {
            method: format!("TRACE\r\n{}", "A".repeat(500)),
        };
        let message = e.message();
        assert!(!message.contains('\r') && !message.contains('\n'));
        assert!(message.contains('…'));
        assert!(message.len() < 500);
    }

    #[test]
    fn base64_codec() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(
                base64_decode(encoded.as_bytes()).as_deref(),
                Some(plain.as_bytes())
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(base64_encode(&all).as_bytes()), Some(all));
        assert_eq!(base64_decode(b"Zg").as_deref(), Some(&b"f"[..]));
        for bad in [&b"Z"[..], b"Zg=", b"Zm9v!", b"Zm9v====", b"=", b"Zm 9v"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn non_base64_basic_values_are_opaque() {
        // Not base64, so the raw placeholder is resolved in place.
        let headers = [header(
            "Authorization",
            "Basic openshell:resolve:env:GITHUB_TOKEN",
        )];
        let out = ok(resolve(&request("/repos/x", &headers), &[github()]));
        assert_eq!(
            value_of(&out, "authorization"),
            format!("Basic {GH_SECRET}").as_bytes()
        );
        // Base64 without a placeholder is left byte for byte.
        let headers = [header("Authorization", " Basic dXNlcjpwYXNz ")];
        assert!(matches!(
            resolve(&request("/repos/x", &headers), &[github()]),
            Ok(None)
        ));
    }

    #[test]
    fn arbitrary_input_never_panics_and_never_leaks_a_marker() {
        // Deterministic xorshift so failures reproduce.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 12] = [
            b"openshell:resolve:env:",
            b"openshell%3Aresolve%3aenv%3A",
            b"GITHUB_TOKEN",
            b"K",
            b"%",
            b"%3",
            b"%25",
            b"Basic ",
            b"/",
            b"?",
            &[0xff, 0xc3],
            b"=",
        ];
        let creds = [
            github(),
            credential("K", "k/v al", vec![binding("api.github.com", &[], None)]),
        ];
        let mut rewrites = 0;
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            for _ in 0..(next() % 8) {
                let piece = pieces[(next() % pieces.len() as u64) as usize];
                bytes.extend_from_slice(piece);
                bytes.push((next() % 128) as u8);
            }
            let target = String::from_utf8_lossy(&bytes).into_owned();
            let basic_value = format!("Basic {}", base64_encode(&bytes)).into_bytes();
            let headers = [
                header("X-Fuzz", &bytes),
                header("Authorization", &basic_value),
            ];
            let head = request(&target, &headers);
            if let Ok(Some(out)) = resolve(&head, &creds) {
                assert!(ensure_no_marker(&out.target, &out.headers).is_ok());
                assert!(!out.resolved.is_empty());
                rewrites += 1;
            }
        }
        assert!(rewrites > 0, "the generator should reach real rewrites");
    }
}
