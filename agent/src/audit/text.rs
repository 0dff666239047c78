//! Text hygiene for audit output: query redaction, single-line cleanup and
//! byte-bounded truncation. Everything that reaches a log line passes
//! through here, because the shorthand log is read back by sandboxed agents
//! (`GET /v1/denials`) and by operators.

use std::borrow::Cow;

/// Marker that replaces a redacted query string.
pub const REDACTED_QUERY: &str = "?[redacted]";

/// Returns `path` without its query string (and fragment).
///
/// Query strings routinely carry credentials (`?access_token=...`), so no
/// audit record ever contains one.
pub fn redact_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(at) => &path[..at],
        None => path,
    }
}

/// Replaces every query string embedded in free text (`?` followed by
/// anything up to whitespace or `]`) with `?[redacted]`.
///
/// Engine reasons and command lines may quote a request target verbatim;
/// this is the same rule `/v1/denials` applies when it reads lines back
/// (reference §4.3), applied before the text is ever written.
pub fn redact_query_text(text: &str) -> Cow<'_, str> {
    if !text.contains('?') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == ']')
            .unwrap_or(after.len());
        if end == 0 {
            // A lone `?` (end of a question, `?]`) carries no query.
            out.push('?');
        } else {
            out.push_str(REDACTED_QUERY);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Marker that replaces a secret found in a command line.
pub const REDACTED_SECRET: &str = "[redacted]";

/// Redacts what looks like a credential in a command line: the word after
/// `Bearer`/`Basic`/`-u`/`--user`, values of secret-named `key=value`
/// arguments, passwords in URL userinfo, and well-known token formats.
/// A command line is logged for attribution; its secrets never are.
pub fn redact_secrets(cmd_line: &str) -> Cow<'_, str> {
    const SECRET_KEYS: [&str; 12] = [
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "secret",
        "apikey",
        "api_key",
        "api-key",
        "access_token",
        "authorization",
        "auth",
    ];
    const TOKEN_PREFIXES: [&str; 8] = [
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "glpat-",
        "sk-",
        "xox",
    ];
    let mut changed = false;
    let mut out = String::with_capacity(cmd_line.len());
    let mut redact_next = false;
    for (i, word) in cmd_line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let bare = word.trim_matches(|c| c == '"' || c == '\'');
        let lower = bare.to_ascii_lowercase();
        let scheme_word = matches!(lower.as_str(), "bearer" | "basic" | "token");
        let redacted: Option<String> = if redact_next && !bare.is_empty() && !scheme_word {
            Some(match bare.split_once(':') {
                // `-u user:pass` keeps the user.
                Some((user, _)) if !user.is_empty() && !lower.starts_with("bearer") => {
                    format!("{user}:{REDACTED_SECRET}")
                }
                _ => REDACTED_SECRET.to_string(),
            })
        } else if TOKEN_PREFIXES
            .iter()
            .any(|p| lower.starts_with(p) && bare.len() > p.len() + 8)
        {
            Some(REDACTED_SECRET.to_string())
        } else if let Some((key, value)) =
            bare.split_once(['=', ':']).filter(|(_, v)| !v.is_empty())
        {
            let key_l = key.trim_start_matches('-').to_ascii_lowercase();
            if SECRET_KEYS.contains(&key_l.as_str()) && !value.starts_with("//") {
                Some(format!(
                    "{key}{}{REDACTED_SECRET}",
                    &bare[key.len()..key.len() + 1]
                ))
            } else if let Some(at) = bare.find("://") {
                // scheme://user:password@host
                let rest = &bare[at + 3..];
                match (rest.find('@'), rest.find(':')) {
                    (Some(at_sign), Some(colon))
                        if colon < at_sign && !rest[..at_sign].contains('/') =>
                    {
                        Some(format!(
                            "{}{}:{REDACTED_SECRET}{}",
                            &bare[..at + 3],
                            &rest[..colon],
                            &rest[at_sign..]
                        ))
                    }
                    _ => None,
                }
            } else {
                None
            }
        } else {
            None
        };
        redact_next = matches!(
            lower.as_str(),
            "bearer" | "basic" | "-u" | "--user" | "--password" | "--token"
        ) || lower.ends_with("authorization:");
        match redacted {
            Some(r) => {
                changed = true;
                out.push_str(&r);
            }
            None => out.push_str(word),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(cmd_line)
    }
}

/// Replaces control characters (CR, LF, ESC, ...) with spaces so a value
/// can never split or forge a log line.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// Cuts `text` to at most `max` bytes on a char boundary and appends
/// `...` when anything was removed.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &text[..end]))
}

/// `[addr]` for IPv6 literals so `host:port` stays unambiguous.
pub fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Redacts, flattens and bounds free text (reasons, messages, command
/// lines) before it is stored in an event.
pub fn sanitize(text: &str, max: usize) -> String {
    let redacted = redact_query_text(text);
    let flat = one_line(&redacted);
    truncate(&flat, max).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_query_strips_query_and_fragment() {
        assert_eq!(redact_query("/repos/o/r?access_token=abc"), "/repos/o/r");
        assert_eq!(redact_query("/a#frag"), "/a");
        assert_eq!(redact_query("/plain/path"), "/plain/path");
        assert_eq!(redact_query("?only=query"), "");
        assert_eq!(redact_query(""), "");
    }

    #[test]
    fn redact_query_text_replaces_embedded_queries() {
        assert_eq!(
            redact_query_text("GET /x?token=s3cret not permitted"),
            "GET /x?[redacted] not permitted"
        );
        assert_eq!(
            redact_query_text("[reason:GET /x?a=1&b=2]"),
            "[reason:GET /x?[redacted]]"
        );
        assert_eq!(
            redact_query_text("/a?x /b?y"),
            "/a?[redacted] /b?[redacted]"
        );
        assert_eq!(redact_query_text("is it allowed? no"), "is it allowed? no");
        assert_eq!(redact_query_text("trailing?"), "trailing?");
        assert_eq!(redact_query_text("/é?ü=ß x"), "/é?[redacted] x");
        assert!(matches!(redact_query_text("no query"), Cow::Borrowed(_)));
    }

    #[test]
    fn one_line_replaces_control_characters() {
        assert_eq!(one_line("a\r\nb\tc\u{1b}[31m"), "a  b c [31m");
        assert!(matches!(one_line("clean"), Cow::Borrowed(_)));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 3), "abc...");
        // 'é' is two bytes; cutting at 2 would split it.
        assert_eq!(truncate("aéb", 2), "a...");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn bracket_ipv6_only_brackets_v6() {
        assert_eq!(bracket_ipv6("2001:db8::1"), "[2001:db8::1]");
        assert_eq!(bracket_ipv6("[::1]"), "[::1]");
        assert_eq!(bracket_ipv6("1.2.3.4"), "1.2.3.4");
        assert_eq!(bracket_ipv6("example.com"), "example.com");
    }

    #[test]
    fn sanitize_combines_all_rules() {
        assert_eq!(sanitize("x?k=v\ny", 100), "x?[redacted] y");
        assert_eq!(sanitize("abcdef", 2), "ab...");
    }

    #[test]
    fn secrets_in_command_lines_are_redacted() {
        let cases = [
            (
                "curl -H Authorization: Bearer abc.def https://x/",
                "curl -H Authorization: Bearer [redacted] https://x/",
            ),
            (
                "curl -u alice:s3cret https://x/",
                "curl -u alice:[redacted] https://x/",
            ),
            (
                "tool --password=hunter2 --name=bob",
                "tool --password=[redacted] --name=bob",
            ),
            (
                "git clone https://bob:tok@github.com/o/r",
                "git clone https://bob:[redacted]@github.com/o/r",
            ),
            ("env TOKEN=xyz run", "env TOKEN=[redacted] run"),
            ("gh auth ghp_0123456789abcdefghij", "gh auth [redacted]"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_secrets(input), expected, "{input}");
        }
        let plain = "curl -sS https://api.example.test/repos?x=1";
        assert!(matches!(redact_secrets(plain), Cow::Borrowed(_)));
    }
}
