//! `GET /v1/denials?last=N` (reference §4.2–4.3): the sandbox's most recent
//! denied decisions, read back from its own shorthand log
//! (`audit::writer::sandbox_log_dir`).
//!
//! Pure file reading: no policy, no gateway. Each file is read backwards in
//! blocks and at most [`MAX_SCAN_BYTES`] of it, so a huge log costs bounded
//! memory and time.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::audit::writer::{SHORTHAND_PREFIX, parse_file_date};

/// Lines returned when `last` is absent or unparsable.
pub const DEFAULT_LAST: usize = 10;
/// Most lines one request may ask for.
pub const MAX_LAST: usize = 100;
/// Longest line returned, in bytes, before `...[truncated]`.
pub const MAX_LINE_BYTES: usize = 4096;

/// Dated files read, newest first (OpenShell reads two).
const FILES_READ: usize = 2;
/// Bytes read per step from the end of a file.
const BLOCK_BYTES: u64 = 64 * 1024;
/// Most bytes read from the end of one file.
const MAX_SCAN_BYTES: u64 = 8 * 1024 * 1024;
/// Most bytes of one line kept while reading; the ` OCSF ` and ` DENIED `
/// markers are near its start, and anything past this is cut anyway.
const MAX_KEPT_LINE_BYTES: usize = 64 * 1024;

const TRUNCATED: &str = "...[truncated]";
const REDACTED: &str = "?[redacted]";
const NOTHING_LOGGED: &str = "no denial has been logged for this sandbox yet";

/// The answer to `GET /v1/denials`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Denials {
    /// Shorthand lines, newest first.
    pub denials: Vec<String>,
    /// False when there is no log to read yet, or it could not be read.
    pub log_available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `last` from the raw query string: default 10, clamped 1..=100,
/// unparsable -> default.
pub fn parse_last(query: Option<&str>) -> usize {
    let value = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == "last")
            .map(|(_, value)| value)
    });
    match value.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(n) => usize::try_from(n).unwrap_or(MAX_LAST).clamp(1, MAX_LAST),
        None => DEFAULT_LAST,
    }
}

/// Reads the two most recent `portcullis.YYYY-MM-DD.log` files in `dir`
/// (newest by the date in the name first; lines newest first), keeps lines
/// containing both " OCSF " and " DENIED ", redacts, truncates, returns at
/// most `last` (itself capped at [`MAX_LAST`]).
///
/// A read error keeps the lines found before it, with `log_available`
/// false and a note naming the problem.
pub fn read_denials(dir: &Path, last: usize) -> Denials {
    read_log(dir, last, Lines::Denied)
}

/// Which shorthand lines a read keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// ` OCSF ` lines with ` DENIED `: what `/v1/denials` serves.
    Denied,
    /// Every ` OCSF ` line: what an operator's log pane follows.
    Events,
}

/// The last `last` lines of one sandbox's shorthand log of the kind
/// asked for, newest first, redacted and bounded like `/v1/denials`.
pub fn read_log(dir: &Path, last: usize, which: Lines) -> Denials {
    let last = last.min(MAX_LAST);
    let names = match newest_log_names(dir) {
        Ok(names) if !names.is_empty() => names,
        Ok(_) => return unavailable(Vec::new(), NOTHING_LOGGED.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return unavailable(Vec::new(), NOTHING_LOGGED.to_string());
        }
        Err(e) => {
            return unavailable(
                Vec::new(),
                format!("cannot list the denial log in {}: {e}", dir.display()),
            );
        }
    };
    let mut denials = Vec::new();
    let mut opened_any = false;
    for name in names {
        if denials.len() >= last {
            break;
        }
        let path = dir.join(&name);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Pruned between listing and opening: nothing to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return unavailable(denials, format!("cannot read {}: {e}", path.display()));
            }
        };
        opened_any = true;
        let scanned = scan_lines_newest_first(file, |line, cut| {
            if let Some(denial) = served_line(line, cut, which) {
                denials.push(denial);
            }
            if denials.len() >= last {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if let Err(e) = scanned {
            return unavailable(denials, format!("cannot read {}: {e}", path.display()));
        }
    }
    if !opened_any {
        return unavailable(denials, NOTHING_LOGGED.to_string());
    }
    Denials {
        denials,
        log_available: true,
        note: None,
    }
}

/// Every `?` and the text after it up to whitespace or `]` becomes
/// `?[redacted]` (multibyte-safe). A lone `?` (nothing follows before
/// whitespace or `]`) carries no query and stays; an existing
/// `?[redacted]` is kept as it is, so redacting twice changes nothing.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix(&REDACTED[1..]) {
            out.push_str(REDACTED);
            rest = tail;
            continue;
        }
        let end = after
            .find(|c: char| c.is_whitespace() || c == ']')
            .unwrap_or(after.len());
        out.push_str(if end == 0 { "?" } else { REDACTED });
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn unavailable(denials: Vec<String>, note: String) -> Denials {
    Denials {
        denials,
        log_available: false,
        note: Some(note),
    }
}

/// Names of the newest dated shorthand files in `dir`, newest first.
fn newest_log_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut dated = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        if let Some(date) = parse_file_date(&name, SHORTHAND_PREFIX) {
            dated.push((date, name));
        }
    }
    dated.sort_by_key(|(date, _)| std::cmp::Reverse(*date));
    Ok(dated
        .into_iter()
        .take(FILES_READ)
        .map(|(_, name)| name)
        .collect())
}

/// The line as served, if it is of the kind asked for: redacted, then
/// truncated. `cut` says the line was already shortened while reading.
fn served_line(raw: &[u8], cut: bool, which: Lines) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let wanted = text.contains(" OCSF ") && (which == Lines::Events || text.contains(" DENIED "));
    if !wanted {
        return None;
    }
    Some(truncate_line(redact(text), cut))
}

/// Cuts `line` to [`MAX_LINE_BYTES`] on a char boundary and marks it; a
/// line `cut` while reading is marked even if it is short now.
fn truncate_line(mut line: String, cut: bool) -> String {
    if line.len() <= MAX_LINE_BYTES && !cut {
        return line;
    }
    let mut end = line.len().min(MAX_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push_str(TRUNCATED);
    line
}

/// Calls `visit` with each non-empty line of `file`, last line first, and
/// whether the line was cut to [`MAX_KEPT_LINE_BYTES`]. Reads backwards in
/// blocks and stops when `visit` breaks or [`MAX_SCAN_BYTES`] are read (a
/// line that started before that point is dropped, being incomplete).
/// Text after the last newline is a line still being written and is
/// skipped: the writer ends every line with one.
fn scan_lines_newest_first<F>(
    mut file: F,
    mut visit: impl FnMut(&[u8], bool) -> ControlFlow<()>,
) -> io::Result<()>
where
    F: Read + Seek,
{
    let len = file.seek(SeekFrom::End(0))?;
    let stop_at = len.saturating_sub(MAX_SCAN_BYTES);
    let mut pos = len;
    // The end of a line whose start lies in a block not read yet.
    let mut carry: Vec<u8> = Vec::new();
    let mut carry_cut = false;
    // Whether the next line found is the unterminated tail of the file.
    let mut in_tail = true;
    let mut block = Vec::new();
    while pos > stop_at {
        let size = (pos - stop_at).min(BLOCK_BYTES);
        pos -= size;
        file.seek(SeekFrom::Start(pos))?;
        // `size` is at most BLOCK_BYTES, so this fits in usize.
        block.resize(usize::try_from(size).unwrap_or(0), 0);
        file.read_exact(&mut block)?;
        let mut end = block.len();
        while let Some(newline) = block[..end].iter().rposition(|&b| b == b'\n') {
            let (line, cut) = prepend_bounded(&block[newline + 1..end], &carry, carry_cut);
            carry.clear();
            carry_cut = false;
            let complete = !std::mem::take(&mut in_tail);
            if complete && !line.is_empty() && visit(&line, cut).is_break() {
                return Ok(());
            }
            end = newline;
        }
        let (joined, cut) = prepend_bounded(&block[..end], &carry, carry_cut);
        carry = joined;
        carry_cut = cut;
    }
    // What is left is the first line of the file, unless the scan stopped
    // early in the middle of one.
    if pos == 0 && !in_tail && !carry.is_empty() {
        let _ = visit(&carry, carry_cut);
    }
    Ok(())
}

/// `head` followed by `tail`, cut to [`MAX_KEPT_LINE_BYTES`] (keeping the
/// start), and whether anything was ever cut.
fn prepend_bounded(head: &[u8], tail: &[u8], tail_cut: bool) -> (Vec<u8>, bool) {
    let keep_tail = MAX_KEPT_LINE_BYTES
        .saturating_sub(head.len())
        .min(tail.len());
    let keep_head = head.len().min(MAX_KEPT_LINE_BYTES);
    let mut joined = Vec::with_capacity(keep_head + keep_tail);
    joined.extend_from_slice(&head[..keep_head]);
    joined.extend_from_slice(&tail[..keep_tail]);
    let cut = tail_cut || keep_head < head.len() || keep_tail < tail.len();
    (joined, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Cursor;

    const DENY_A: &str = "2026-03-01T12:00:00.001Z OCSF NET:OPEN [MED] DENIED /usr/bin/curl(64) -> a.example:443 [policy:- engine:opa] [reason:endpoint a.example:443 is not allowed by any policy]";
    const ALLOW: &str =
        "2026-03-01T12:00:00.002Z OCSF NET:OPEN [INFO] ALLOWED /usr/bin/curl(64) -> ok.example:443";

    fn deny(n: u32) -> String {
        format!(
            "2026-03-01T12:00:{n:02}.000Z OCSF NET:OPEN [MED] DENIED /usr/bin/curl(1) -> h{n}.example:443 [policy:- engine:opa]"
        )
    }

    fn write(dir: &Path, name: &str, lines: &[&str]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn last_is_parsed_and_clamped() {
        assert_eq!(parse_last(Some("last=0")), 1);
        assert_eq!(parse_last(Some("last=1000")), 100);
        assert_eq!(
            parse_last(Some("last=99999999999999999999999")),
            DEFAULT_LAST
        );
        assert_eq!(parse_last(Some("last=x")), 10);
        assert_eq!(parse_last(Some("last=-3")), 10);
        assert_eq!(parse_last(Some("last=")), 10);
        assert_eq!(parse_last(Some("last")), 10);
        assert_eq!(parse_last(None), 10);
        assert_eq!(parse_last(Some("")), 10);
        assert_eq!(parse_last(Some("last=25")), 25);
        assert_eq!(parse_last(Some("foo=1&last=3")), 3);
        assert_eq!(parse_last(Some("blast=3")), 10);
    }

    #[test]
    fn only_denied_ocsf_lines_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "portcullis.2026-03-01.log",
            &[
                DENY_A,
                ALLOW,
                "2026-03-01T12:00:00.003Z INFO portcullis: DENIED is a word here",
                "2026-03-01T12:00:00.004Z OCSF CONFIG:LOADED [INFO] policy loaded",
                "",
                &deny(5),
            ],
        );
        let got = read_denials(tmp.path(), 10);
        assert_eq!(
            got,
            Denials {
                denials: vec![deny(5), DENY_A.to_string()],
                log_available: true,
                note: None,
            }
        );
    }

    #[test]
    fn newest_file_first_and_only_two_files_and_no_json() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "portcullis.2026-02-27.log", &[&deny(1)]);
        write(d, "portcullis.2026-02-28.log", &[&deny(2), &deny(3)]);
        write(d, "portcullis.2026-03-01.log", &[&deny(4), &deny(5)]);
        // The JSON log and other names are never read, even if they match.
        write(d, "ocsf.2026-03-02.log", &[&deny(9)]);
        write(d, "portcullis.2026-03-03.log.gz", &[&deny(8)]);
        write(d, "portcullis.latest.log", &[&deny(7)]);
        let got = read_denials(d, 100);
        assert_eq!(got.denials, [deny(5), deny(4), deny(3), deny(2)]);
        assert!(got.log_available);
        let got = read_denials(d, 3);
        assert_eq!(got.denials, [deny(5), deny(4), deny(3)]);
    }

    #[test]
    fn file_order_is_by_date_in_the_name_not_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "portcullis.2026-03-01.log", &[&deny(2)]);
        // Written later, but an older day.
        write(d, "portcullis.2026-01-09.log", &[&deny(1)]);
        assert_eq!(read_denials(d, 10).denials, [deny(2), deny(1)]);
    }

    #[test]
    fn missing_dir_or_files_give_a_note() {
        let tmp = tempfile::tempdir().unwrap();
        let absent = read_denials(&tmp.path().join("nope"), 10);
        assert_eq!(
            absent,
            Denials {
                denials: vec![],
                log_available: false,
                note: Some(NOTHING_LOGGED.to_string()),
            }
        );
        write(tmp.path(), "ocsf.2026-03-01.log", &[&deny(1)]);
        assert_eq!(read_denials(tmp.path(), 10), absent);
        let json = serde_json::to_value(&absent).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"denials": [], "log_available": false, "note": NOTHING_LOGGED})
        );
    }

    #[test]
    fn note_is_left_out_when_available() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "portcullis.2026-03-01.log", &[ALLOW]);
        let got = read_denials(tmp.path(), 10);
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::json!({"denials": [], "log_available": true})
        );
    }

    #[test]
    fn read_error_names_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where a file should be cannot be read as one.
        fs::create_dir(tmp.path().join("portcullis.2026-03-02.log")).unwrap();
        write(tmp.path(), "portcullis.2026-03-01.log", &[&deny(1)]);
        let got = read_denials(tmp.path(), 10);
        assert!(!got.log_available);
        let note = got.note.unwrap();
        assert!(note.contains("portcullis.2026-03-02.log"), "{note}");
        // Not a directory at all.
        let file = tmp.path().join("portcullis.2026-03-01.log");
        let got = read_denials(&file, 10);
        assert!(!got.log_available);
        assert!(got.note.unwrap().contains("cannot list"));
    }

    #[test]
    fn queries_are_redacted_inside_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let line = "2026-03-01T12:00:00.000Z OCSF HTTP:GET [MED] DENIED /usr/bin/curl(9) -> GET https://api.example/v1/x?token=s3cret [policy:r engine:l7] [reason:GET /v1/x?token=s3cret&b=2]";
        write(tmp.path(), "portcullis.2026-03-01.log", &[line]);
        let got = read_denials(tmp.path(), 10);
        assert_eq!(
            got.denials,
            [
                "2026-03-01T12:00:00.000Z OCSF HTTP:GET [MED] DENIED /usr/bin/curl(9) -> GET https://api.example/v1/x?[redacted] [policy:r engine:l7] [reason:GET /v1/x?[redacted]]"
            ]
        );
        assert!(!got.denials[0].contains("s3cret"));
    }

    #[test]
    fn redaction_rules() {
        assert_eq!(redact("no query"), "no query");
        assert_eq!(redact("/a?x=1 /b?y"), "/a?[redacted] /b?[redacted]");
        assert_eq!(redact("/a?x=1?y=2\tz"), "/a?[redacted]\tz");
        assert_eq!(redact("[r:/a?k=v]"), "[r:/a?[redacted]]");
        assert_eq!(redact("why? because"), "why? because");
        assert_eq!(redact("end?"), "end?");
        assert_eq!(redact("[what?]"), "[what?]");
        // Already redacted lines stay as they are.
        assert_eq!(redact("/a?[redacted] b"), "/a?[redacted] b");
        assert_eq!(redact(&redact("/a?x=1]")), "/a?[redacted]]");
        // Multibyte text around and inside the query.
        assert_eq!(redact("é/ü?ключ=значение ok"), "é/ü?[redacted] ok");
        assert_eq!(redact("x?日本\u{3000}y"), "x?[redacted]\u{3000}y");
        assert_eq!(redact("??"), "?[redacted]");
    }

    #[test]
    fn long_lines_are_truncated_on_a_char_boundary() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = "2026-03-01T12:00:00.000Z OCSF NET:OPEN [MED] DENIED ";
        // 'é' is two bytes; with an odd-length prefix the 4096-byte mark
        // falls inside one.
        let long = format!("{prefix}{}", "é".repeat(3000));
        assert_eq!(prefix.len() % 2, 0);
        let long_odd = format!("{prefix}x{}", "é".repeat(3000));
        write(tmp.path(), "portcullis.2026-03-01.log", &[&long, &long_odd]);
        let got = read_denials(tmp.path(), 10).denials;
        for line in &got {
            let body = line.strip_suffix(TRUNCATED).unwrap();
            assert!(body.len() <= MAX_LINE_BYTES && body.len() >= MAX_LINE_BYTES - 1);
            assert!(body.ends_with('é'));
        }
        assert_eq!(got[0].len(), MAX_LINE_BYTES - 1 + TRUNCATED.len());
        // Exactly at the limit: untouched.
        let exact = format!("{prefix}{}", "a".repeat(MAX_LINE_BYTES - prefix.len()));
        assert_eq!(truncate_line(exact.clone(), false), exact);
    }

    #[test]
    fn redaction_happens_before_truncation() {
        let prefix = "2026-03-01T12:00:00.000Z OCSF NET:OPEN [MED] DENIED /x?";
        let line = format!("{prefix}{} tail", "s".repeat(10_000));
        let got = served_line(line.as_bytes(), false, Lines::Denied).unwrap();
        assert_eq!(
            got,
            "2026-03-01T12:00:00.000Z OCSF NET:OPEN [MED] DENIED /x?[redacted] tail"
        );
    }

    #[test]
    fn reader_handles_block_boundaries_huge_lines_and_no_final_newline() {
        let mut text = String::new();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let line = format!("line {i} {}", "ж".repeat((i % 50) as usize));
            text.push_str(&line);
            text.push('\n');
            expected.push(line);
        }
        let huge = format!("big {}", "z".repeat(200_000));
        text.push_str(&huge);
        text.push('\n');
        text.push_str("unterminated");
        let mut seen: Vec<(String, bool)> = Vec::new();
        scan_lines_newest_first(Cursor::new(text.into_bytes()), |line, cut| {
            seen.push((String::from_utf8(line.to_vec()).unwrap(), cut));
            ControlFlow::Continue(())
        })
        .unwrap();
        // "unterminated" is still being written: skipped.
        assert!(seen[0].1, "the huge line is marked cut");
        assert_eq!(seen[0].0.len(), MAX_KEPT_LINE_BYTES);
        assert!(seen[0].0.starts_with("big zzz"));
        let rest: Vec<String> = seen[1..].iter().map(|(l, _)| l.clone()).collect();
        expected.reverse();
        assert_eq!(rest, expected);
    }

    #[test]
    fn reader_skips_a_partial_last_line_but_keeps_the_first_line() {
        let lines = |text: &str| {
            let mut seen = Vec::new();
            scan_lines_newest_first(Cursor::new(text.as_bytes().to_vec()), |l, _| {
                seen.push(String::from_utf8(l.to_vec()).unwrap());
                ControlFlow::Continue(())
            })
            .unwrap();
            seen
        };
        assert_eq!(lines("one\ntwo\n"), ["two", "one"]);
        assert_eq!(lines("one\ntw"), ["one"]);
        assert_eq!(lines("on"), Vec::<String>::new());
        assert_eq!(lines(""), Vec::<String>::new());
        assert_eq!(lines("\n\none\n\n"), ["one"]);
        let long_tail = format!("one\n{}", "t".repeat(3 * BLOCK_BYTES as usize));
        assert_eq!(lines(&long_tail), ["one"]);
    }

    #[test]
    fn reader_stops_early_and_caps_the_scan() {
        // Stops as soon as the visitor has enough.
        let mut count = 0;
        scan_lines_newest_first(Cursor::new(b"a\nb\nc\n".to_vec()), |_, _| {
            count += 1;
            if count == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(count, 2);
        // A file bigger than the cap: only its tail is read, and the line
        // the cap falls into is dropped rather than served half.
        let line = format!("{}\n", "q".repeat(1023));
        let lines = (MAX_SCAN_BYTES as usize) / line.len() + 10;
        let mut text = String::from("first line\n");
        text.push_str(&line.repeat(lines));
        let mut seen = 0usize;
        let mut saw_first = false;
        scan_lines_newest_first(Cursor::new(text.into_bytes()), |l, _| {
            seen += 1;
            saw_first |= l == b"first line";
            assert_eq!(l.len(), 1023);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(!saw_first);
        // The window holds exactly this many whole lines, but the first of
        // them cannot be told from a partial one (no newline seen before it).
        assert_eq!(seen, MAX_SCAN_BYTES as usize / line.len() - 1);
    }

    #[test]
    fn last_caps_the_answer() {
        let tmp = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..60).map(deny).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        write(tmp.path(), "portcullis.2026-03-01.log", &refs);
        write(tmp.path(), "portcullis.2026-03-02.log", &refs);
        assert_eq!(read_denials(tmp.path(), 1).denials, [deny(59)]);
        assert_eq!(read_denials(tmp.path(), 100).denials.len(), 100);
        assert_eq!(read_denials(tmp.path(), 5000).denials.len(), MAX_LAST);
    }

    #[test]
    fn the_event_reader_keeps_every_ocsf_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "portcullis.2026-01-01.log",
            &[
                "2026-01-01T00:00:00.000Z OCSF NET:OPEN [INFO] ALLOWED a",
                "2026-01-01T00:00:01.000Z INFO portcullis: not an event",
                &deny(1),
            ],
        );
        let got = read_log(dir.path(), 10, Lines::Events);
        assert_eq!(got.denials.len(), 2);
        assert!(got.denials[1].contains("ALLOWED a"));
        assert_eq!(read_log(dir.path(), 10, Lines::Denied).denials.len(), 1);
    }
}
