//! The workload that runs in the sandbox (`workload.py`) and the progress
//! lines it prints.

use serde_json::Value;

/// `python3 -c SCRIPT SECONDS HOST PORT RATE`.
pub const SCRIPT: &str = include_str!("workload.py");

/// The workload's cumulative counts, from its last progress line.
///
/// `requests` are the HTTP requests and connections to the upstream side
/// (allowed, denied, escaped or failed); DNS lookups and proposals are
/// counted apart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub seconds: f64,
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Denied requests that got a 2xx answer: must stay 0.
    pub escapes: u64,
    /// Timeouts, unexpected statuses, failed lookups.
    pub errors: u64,
    pub dns: u64,
    pub proposals: u64,
    pub proposals_accepted: u64,
    pub proposals_limited: u64,
    pub last_error: Option<String>,
    /// The workload reached its deadline and said so.
    pub done: bool,
}

impl Progress {
    /// One progress line, or `None` for anything else the workload printed.
    pub fn parse(line: &str) -> Option<Progress> {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        let count = |key: &str| v[key].as_u64();
        Some(Progress {
            seconds: v["t"].as_f64()?,
            requests: count("requests")?,
            allowed: count("allowed")?,
            denied: count("denied")?,
            escapes: count("escapes").unwrap_or(0),
            errors: count("errors").unwrap_or(0),
            dns: count("dns").unwrap_or(0),
            proposals: count("proposals").unwrap_or(0),
            proposals_accepted: count("proposals_accepted").unwrap_or(0),
            proposals_limited: count("proposals_limited").unwrap_or(0),
            last_error: v["last_error"].as_str().map(str::to_string),
            done: v["done"].as_bool().unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_parsed_and_other_output_is_not() {
        let line = r#"{"requests": 120, "allowed": 70, "denied": 48, "escapes": 0, "errors": 2, "dns": 24, "proposals": 1, "proposals_accepted": 1, "proposals_limited": 0, "t": 12.0, "last_error": "dns x: timeout"}"#;
        let p = Progress::parse(line).unwrap();
        assert_eq!(
            (p.requests, p.allowed, p.denied, p.errors),
            (120, 70, 48, 2)
        );
        assert_eq!((p.dns, p.proposals, p.proposals_accepted), (24, 1, 1));
        assert_eq!(p.seconds, 12.0);
        assert_eq!(p.last_error.as_deref(), Some("dns x: timeout"));
        assert!(!p.done);
        let last = r#"{"requests": 1, "allowed": 1, "denied": 0, "t": 60.0, "last_error": null, "done": true}"#;
        let p = Progress::parse(last).unwrap();
        assert!(p.done);
        assert_eq!(p.last_error, None);
        assert_eq!(Progress::parse("Traceback (most recent call last):"), None);
        assert_eq!(Progress::parse(r#"{"status": 202}"#), None);
    }

    #[test]
    fn the_script_takes_the_arguments_the_driver_passes() {
        assert!(SCRIPT.contains("SECONDS, HOST, PORT, RATE = "));
        assert!(SCRIPT.contains("/v1/proposals"));
    }
}
