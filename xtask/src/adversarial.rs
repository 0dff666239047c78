//! The adversarial report: what the adversarial tests (`tests/tests/
//! adversarial.rs`) and the last fuzz campaign (`cargo xtask fuzz`)
//! recorded under `target/adversarial/`, printed as one block at the end
//! of `cargo xtask test` and `cargo xtask fuzz`.

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
    out
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
        assert!(text.contains("cargo xtask fuzz --minutes N"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
