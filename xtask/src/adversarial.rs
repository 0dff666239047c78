//! The adversarial report: what the adversarial tests (`tests/tests/
//! adversarial.rs`), the last fuzz campaign (`cargo xtask fuzz`) and the
//! last soak (`cargo xtask soak`) recorded under `target/adversarial/`,
//! printed as one block at the end of `cargo xtask test`, `fuzz` and
//! `soak`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::workspace_root;

pub fn dir() -> PathBuf {
    workspace_root().join("target/adversarial")
}

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Records that `cargo xtask fuzz` and `soak` write; a test run keeps them.
const CAMPAIGN_RECORDS: [&str; 2] = ["fuzz.json", "soak.json"];

/// Removes the records the tests write, so last run's cannot stand in for
/// this run's.
pub fn clear_test_records(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") && !CAMPAIGN_RECORDS.contains(&name.as_ref()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Faults the fault tests injected (`fault-<name>.json`, one per fault):
/// how many, and how many the agent survived.
fn faults_line(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("fault-").then_some(name)
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return "  faults           not run".into();
    }
    names.sort();
    let survived = names
        .iter()
        .filter(|n| read(dir, n).is_some_and(|v| v["survived"] == true))
        .count();
    format!(
        "  faults           {} injected, {survived} survived",
        names.len()
    )
}

/// The report's lines; a part with no record says how to produce it.
pub fn lines(dir: &Path) -> Vec<String> {
    let mut out = vec!["adversarial report".to_string()];
    out.push(match read(dir, "escapes.json") {
        Some(v) => format!(
            "  escape attempts  {} made, {} escapes (must be 0)",
            count(&v, "attempts"),
            count(&v, "escapes")
        ),
        None => "  escape attempts  not run (privileged tests skipped?)".into(),
    });
    out.push(match read(dir, "http.json") {
        Some(v) => format!(
            "  HTTP tricks      {} made, {} escapes (must be 0)",
            count(&v, "attempts"),
            count(&v, "escapes")
        ),
        None => "  HTTP tricks      not run".into(),
    });
    out.push(match read(dir, "flood.json") {
        Some(v) => format!(
            "  proposal flood   {} sent, {} accepted, {} rate-limited and counted",
            count(&v, "sent"),
            count(&v, "accepted"),
            count(&v, "rate_limited")
        ),
        None => "  proposal flood   not run".into(),
    });
    out.push(match read(dir, "names.json") {
        Some(v) => format!(
            "  names, proposals {} made, {} escapes (must be 0)",
            count(&v, "attempts"),
            count(&v, "escapes")
        ),
        None => "  names, proposals not run".into(),
    });
    out.push(match read(dir, "leaks.json") {
        Some(v) => format!(
            "  secrets          {} placements tried, {} leaked (must be 0)",
            count(&v, "attempts"),
            count(&v, "leaked")
        ),
        None => "  secrets          not run".into(),
    });
    out.push(faults_line(dir));
    out.push(match read(dir, "fuzz.json") {
        Some(v) => format!(
            "  fuzzing          {} targets, {} executions, {} crashes (must be 0), last campaign {}",
            v["targets"].as_array().map_or(0, Vec::len),
            count(&v, "executions"),
            count(&v, "crashes"),
            v["finished"].as_str().unwrap_or("?")
        ),
        None => "  fuzzing          no campaign yet: `cargo xtask fuzz --minutes N`".into(),
    });
    out.push(match read(dir, "soak.json") {
        Some(v) => soak_line(&v),
        None => "  soak             no run yet: `cargo xtask soak --minutes N`".into(),
    });
    out
}

fn soak_line(v: &Value) -> String {
    let slope = |key: &str| {
        v["slopes"][key]
            .as_f64()
            // A slope that rounds to zero reads `+0.0`, not `-0.0`.
            .map_or("?".to_string(), |s| {
                format!("{:+.1}", if s.abs() < 0.05 { 0.0 } else { s })
            })
    };
    let verdict = match (v["flat"].as_bool(), v["passed"].as_bool()) {
        (Some(true), Some(false)) => format!(
            "flat, FAILED: {}",
            v["problems"][0].as_str().unwrap_or("see soak.json")
        ),
        (Some(true), _) => "flat".to_string(),
        _ => "GROWING".to_string(),
    };
    format!(
        "  soak             {} min, {} requests ({} allowed, {} denied), {} reloads, {} proposals; \
         slopes per minute: RSS {} KiB, fds {}, map entries {} ({verdict})",
        v["minutes"].as_f64().unwrap_or(0.0),
        count(v, "requests"),
        count(v, "allowed"),
        count(v, "denied"),
        count(v, "reloads"),
        count(v, "proposals"),
        slope("rss_kib_per_min"),
        slope("fds_per_min"),
        slope("map_entries_per_min"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_summed_and_missing_ones_say_how_to_get_them() {
        let dir = std::env::temp_dir().join(format!("xtask-adv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("escapes.json"),
            r#"{"attempts": 13, "escapes": 0}"#,
        )
        .unwrap();
        let text = lines(&dir).join("\n");
        assert!(text.contains("13 made, 0 escapes"), "{text}");
        assert!(text.contains("proposal flood   not run"), "{text}");
        assert!(text.contains("faults           not run"), "{text}");
        for (name, survived) in [("fault-a.json", true), ("fault-b.json", false)] {
            std::fs::write(
                dir.join(name),
                serde_json::json!({"survived": survived}).to_string(),
            )
            .unwrap();
        }
        std::fs::write(dir.join("leaks.json"), r#"{"attempts": 9, "leaked": 0}"#).unwrap();
        std::fs::write(dir.join("names.json"), r#"{"attempts": 4, "escapes": 1}"#).unwrap();
        let text = lines(&dir).join("\n");
        assert!(
            text.contains("faults           2 injected, 1 survived"),
            "{text}"
        );
        assert!(
            text.contains("secrets          9 placements tried, 0 leaked (must be 0)"),
            "{text}"
        );
        assert!(
            text.contains("names, proposals 4 made, 1 escapes (must be 0)"),
            "{text}"
        );
        assert!(text.contains("cargo xtask fuzz --minutes N"), "{text}");
        assert!(
            text.contains("soak             no run yet: `cargo xtask soak --minutes N`"),
            "{text}"
        );
        std::fs::write(
            dir.join("soak.json"),
            r#"{"minutes": 5, "requests": 60000, "allowed": 36000, "denied": 24000,
                "reloads": 100, "proposals": 30, "flat": true, "passed": true,
                "slopes": {"rss_kib_per_min": 12.34, "fds_per_min": -0.3,
                           "map_entries_per_min": -0.01}}"#,
        )
        .unwrap();
        let text = lines(&dir).join("\n");
        assert!(
            text.contains(
                "  soak             5 min, 60000 requests (36000 allowed, 24000 denied), \
                 100 reloads, 30 proposals; slopes per minute: RSS +12.3 KiB, fds -0.3, \
                 map entries +0.0 (flat)"
            ),
            "{text}"
        );
        std::fs::write(
            dir.join("soak.json"),
            r#"{"minutes": 0.5, "flat": false, "passed": false,
                "slopes": {"rss_kib_per_min": 4096.0}}"#,
        )
        .unwrap();
        let text = lines(&dir).join("\n");
        assert!(text.contains("0.5 min"), "{text}");
        assert!(
            text.contains("RSS +4096.0 KiB, fds ?, map entries ? (GROWING)"),
            "{text}"
        );
        std::fs::write(dir.join("fuzz.json"), "{}").unwrap();
        clear_test_records(&dir);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["fuzz.json", "soak.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
