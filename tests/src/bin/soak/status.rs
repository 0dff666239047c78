//! What the driver reads about the agent: `portcullis status` and
//! `/proc/<pid>/status`.

/// The figures the soak follows from `portcullis status`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentStatus {
    /// Entries per kernel map, from the `maps` line; `None` when the agent
    /// prints no such line.
    pub maps: Option<Vec<(String, u64)>>,
    /// From `connections   N active, ...`.
    pub connections_active: Option<u64>,
}

impl AgentStatus {
    pub fn parse(text: &str) -> AgentStatus {
        let mut status = AgentStatus::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("maps") => status.maps = Some(map_entries(words)),
                Some("connections") => {
                    let rest: Vec<&str> = words.collect();
                    status.connections_active = rest
                        .windows(2)
                        .find(|w| w[1].trim_end_matches(',') == "active")
                        .and_then(|w| w[0].parse().ok());
                }
                _ => {}
            }
        }
        status
    }

    /// Entries across every map.
    pub fn map_total(&self) -> Option<u64> {
        self.maps.as_ref().map(|m| m.iter().map(|(_, n)| n).sum())
    }
}

/// `connect_by_cookie 3, connect_by_source 0, sandbox_cgroups 1` (also
/// `name=N` or `name: N`) -> the pairs, in order.
fn map_entries<'a>(words: impl Iterator<Item = &'a str>) -> Vec<(String, u64)> {
    let tokens: Vec<&str> = words
        .flat_map(|w| w.split(['=', ',']))
        .map(|w| w.trim_end_matches(':'))
        .filter(|w| !w.is_empty())
        .collect();
    tokens
        .windows(2)
        .filter_map(|w| match (w[0].parse::<u64>(), w[1].parse::<u64>()) {
            (Err(_), Ok(n)) => Some((w[0].to_string(), n)),
            _ => None,
        })
        .collect()
}

/// The agent process as `/proc/<pid>/status` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    /// Not a zombie: the driver holds the agent's child handle without
    /// waiting on it, so a dead agent stays in the table as `Z`.
    pub alive: bool,
    pub rss_kib: Option<u64>,
}

impl Process {
    pub fn parse(text: &str) -> Process {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let state = field("State").unwrap_or("");
        Process {
            alive: !state.is_empty() && !state.starts_with(['Z', 'X']),
            rss_kib: field("VmRSS")
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
agent         running (pid 4242, version 0.1.0, up 61s)
listeners     proxy 127.0.0.1:21500  dns 127.0.0.1:21501
programs      9 links attached
sandboxes     1
connections   7 active, 1200 total, 300 denied, 0 without original destination
kernel        0 denials reported
  udp_denied              0
maps          connect_by_cookie 12, connect_by_source 3, sandbox_cgroups 1
audit         0 events dropped (queue full), 0 lost to write errors
policy.local  0 proposals refused by the rate limit
";

    #[test]
    fn maps_and_active_connections_are_read_from_status() {
        let s = AgentStatus::parse(STATUS);
        assert_eq!(s.connections_active, Some(7));
        assert_eq!(
            s.maps.as_deref(),
            Some(
                &[
                    ("connect_by_cookie".to_string(), 12),
                    ("connect_by_source".to_string(), 3),
                    ("sandbox_cgroups".to_string(), 1),
                ][..]
            )
        );
        assert_eq!(s.map_total(), Some(16));
    }

    #[test]
    fn other_spellings_of_the_maps_line_are_read_too() {
        let s = AgentStatus::parse("maps          a=1, b: 2 c 3\n");
        assert_eq!(s.map_total(), Some(6));
        assert_eq!(s.maps.unwrap().len(), 3);
    }

    #[test]
    fn an_agent_without_the_maps_line_reports_none() {
        let s = AgentStatus::parse("connections   0 active, 0 total\n");
        assert_eq!(s.maps, None);
        assert_eq!(s.map_total(), None);
        assert_eq!(s.connections_active, Some(0));
    }

    #[test]
    fn rss_and_liveness_come_from_proc_status() {
        let p = Process::parse("Name:\tportcullis\nState:\tS (sleeping)\nVmRSS:\t   23456 kB\n");
        assert_eq!(
            p,
            Process {
                alive: true,
                rss_kib: Some(23456)
            }
        );
        let zombie = Process::parse("Name:\tportcullis\nState:\tZ (zombie)\n");
        assert_eq!(
            zombie,
            Process {
                alive: false,
                rss_kib: None
            }
        );
        assert!(!Process::parse("").alive);
    }
}
