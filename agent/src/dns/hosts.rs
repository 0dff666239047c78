//! Static name table in the /etc/hosts format (`IP name [aliases...]`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;

/// Longest name in presentation form (255 wire octets minus the length
/// bytes of the first label and the root).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Lowercase name -> addresses, in file order without duplicates.
#[derive(Debug, Clone, Default)]
pub struct HostsTable {
    entries: HashMap<String, Vec<IpAddr>>,
    warnings: Vec<String>,
}

impl HostsTable {
    /// Parses hosts-file text. Bad lines (and bad names on otherwise good
    /// lines) are skipped, each leaving a warning in [`Self::warnings`],
    /// because one typo should not take every other entry down with it.
    pub fn parse(text: &str) -> HostsTable {
        let mut table = HostsTable::default();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.split_once('#').map_or(raw, |(before, _)| before);
            let mut fields = line.split_ascii_whitespace();
            let Some(addr_field) = fields.next() else {
                continue; // blank or comment-only
            };
            let addr = match addr_field.parse::<IpAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    table
                        .warnings
                        .push(format!("line {line_no}: invalid address {addr_field:?}"));
                    continue;
                }
            };
            let mut any_name = false;
            for name in fields {
                any_name = true;
                if !table.insert(name, addr) {
                    table
                        .warnings
                        .push(format!("line {line_no}: invalid host name {name:?}"));
                }
            }
            if !any_name {
                table
                    .warnings
                    .push(format!("line {line_no}: address {addr} has no names"));
            }
        }
        table
    }

    /// Reads and parses a hosts file. Invalid UTF-8 is replaced rather than
    /// rejected, so a stray byte in a comment does not lose the file.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<HostsTable> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading hosts file {}", path.display()))?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// Adds `addr` to `name` (kept after any earlier addresses, once).
    /// Returns false, changing nothing, if `name` is not a valid host name.
    pub fn insert(&mut self, name: &str, addr: IpAddr) -> bool {
        let Some(key) = normalize_name(name) else {
            return false;
        };
        let addrs = self.entries.entry(key).or_default();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        true
    }

    /// Addresses for `name`, matched case-insensitively, with or without a
    /// trailing dot.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.entries
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
    }

    /// Adds `other`'s entries; where both tables have a name, `other`'s
    /// addresses replace ours (the later table wins). Warnings accumulate.
    pub fn merge(&mut self, other: HostsTable) {
        self.entries.extend(other.entries);
        self.warnings.extend(other.warnings);
    }

    /// Problems met while parsing, each naming its line.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Lowercases `name` and drops one trailing dot if it is a plausible host
/// name: letters, digits, '-' and '_' in labels of 1..=63 characters.
fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_names_aliases_comments_and_blank_lines() {
        let table = HostsTable::parse(
            "# leading comment\n\
             \n\
             127.0.0.1\tlocalhost\n\
             10.0.0.5   db.internal  db   # trailing comment\n\
             ::1 ip6-localhost ip6-loopback\n",
        );
        assert!(table.warnings().is_empty(), "{:?}", table.warnings());
        assert_eq!(table.len(), 5);
        assert_eq!(
            table.lookup("localhost"),
            Some(&[IpAddr::V4(Ipv4Addr::LOCALHOST)][..])
        );
        assert_eq!(table.lookup("db"), Some(&[ip("10.0.0.5")][..]));
        assert_eq!(
            table.lookup("ip6-loopback"),
            Some(&[IpAddr::V6(Ipv6Addr::LOCALHOST)][..])
        );
        assert_eq!(table.lookup("missing"), None);
    }

    #[test]
    fn keeps_file_order_and_drops_duplicates() {
        let table = HostsTable::parse(
            "10.0.0.2 svc\n\
             fd00::1 svc\n\
             10.0.0.1 svc\n\
             10.0.0.2 svc SVC\n",
        );
        assert_eq!(
            table.lookup("svc"),
            Some(&[ip("10.0.0.2"), ip("fd00::1"), ip("10.0.0.1")][..])
        );
    }

    #[test]
    fn lookup_ignores_case_and_trailing_dot() {
        let table = HostsTable::parse("192.0.2.1 Api.Example.COM.\n");
        for name in ["api.example.com", "API.EXAMPLE.COM", "api.example.com."] {
            assert_eq!(table.lookup(name), Some(&[ip("192.0.2.1")][..]), "{name}");
        }
    }

    #[test]
    fn bad_lines_are_skipped_with_numbered_warnings() {
        let table = HostsTable::parse(
            "10.0.0.1 good\n\
             300.1.1.1 bad-ip\n\
             fe80::1%eth0 scoped\n\
             10.0.0.2\n\
             10.0.0.3 ok bad!name also-ok\n",
        );
        assert_eq!(
            table.warnings(),
            [
                "line 2: invalid address \"300.1.1.1\"",
                "line 3: invalid address \"fe80::1%eth0\"",
                "line 4: address 10.0.0.2 has no names",
                "line 5: invalid host name \"bad!name\"",
            ]
        );
        assert_eq!(table.len(), 3);
        assert!(table.lookup("also-ok").is_some());
        assert!(table.lookup("bad-ip").is_none());
    }

    #[test]
    fn rejects_overlong_labels_and_names() {
        let mut table = HostsTable::default();
        assert!(!table.insert(&"a".repeat(64), ip("10.0.0.1")));
        assert!(table.insert(&"a".repeat(63), ip("10.0.0.1")));
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert!(!table.insert(&long, ip("10.0.0.1")));
        assert!(!table.insert("a..b", ip("10.0.0.1")));
        assert!(!table.insert(".", ip("10.0.0.1")));
    }

    #[test]
    fn merge_later_table_wins_per_name() {
        let mut base = HostsTable::parse("10.0.0.1 a b\n");
        let over = HostsTable::parse("10.0.0.9 b c\nnot-an-ip x\n");
        base.merge(over);
        assert_eq!(base.lookup("a"), Some(&[ip("10.0.0.1")][..]));
        assert_eq!(base.lookup("b"), Some(&[ip("10.0.0.9")][..]));
        assert_eq!(base.lookup("c"), Some(&[ip("10.0.0.9")][..]));
        assert_eq!(base.warnings().len(), 1);
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let path = std::env::temp_dir().join(format!(
            "portcullis-hosts-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, b"10.1.2.3 from-file # caf\xe9\n").unwrap();
        let loaded = HostsTable::load(&path);
        std::fs::remove_file(&path).unwrap();
        let table = loaded.unwrap();
        assert_eq!(table.lookup("from-file"), Some(&[ip("10.1.2.3")][..]));

        let err = HostsTable::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("reading hosts file"), "{err:#}");
    }
}
