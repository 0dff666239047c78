//! The soak's output: the live table, the summary and
//! `target/adversarial/soak.json`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::verdict::{self, Run, Sample, Slopes, Verdict};

pub fn header() -> String {
    format!(
        "{:>7}  {:>8}  {:>5}  {:>11}  {:>12}  {:>9}  {:>7}",
        "t (s)", "RSS MiB", "fds", "map entries", "active conns", "requests", "reloads"
    )
}

/// A table row; `requests` and `reloads` are the run's totals so far.
pub fn row(s: &Sample, requests: u64, reloads: u64) -> String {
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
    format!(
        "{:>7.0}  {:>8.1}  {:>5}  {:>11}  {:>12}  {:>9}  {:>7}",
        s.seconds,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        opt(s.map_entries),
        opt(s.connections_active),
        requests,
        reloads
    )
}

/// `+1.5 KiB`; a slope that rounds to zero prints as `+0.0`, not `-0.0`.
fn signed(v: Option<f64>, unit: &str) -> String {
    v.map_or("not measured".to_string(), |v| {
        let v = if v.abs() < 0.05 { 0.0 } else { v };
        format!("{v:+.1}{unit}")
    })
}

/// The lines after the table: warm-up, slopes, totals, verdict.
pub fn summary(
    minutes: f64,
    samples: &[Sample],
    warmup: usize,
    slopes: &Slopes,
    run: &Run,
    verdict: &Verdict,
) -> Vec<String> {
    let w = &run.workload;
    let mut out = vec![format!(
        "soak: warm-up: {warmup} of {} samples (the first {:.0} s) left out of the slopes",
        samples.len(),
        samples.get(warmup).map_or(0.0, |s| s.seconds)
    )];
    out.push(format!(
        "soak: slopes per minute: RSS {}, fds {}, map entries {}",
        signed(slopes.rss_kib, " KiB"),
        signed(slopes.fds, ""),
        signed(slopes.map_entries, "")
    ));
    if !slopes.per_map.is_empty() {
        let per_map: Vec<String> = slopes
            .per_map
            .iter()
            .map(|(name, s)| format!("{name} {}", signed(Some(*s), "")))
            .collect();
        out.push(format!("soak: per map: {}", per_map.join(", ")));
    }
    out.push(format!(
        "soak: bounds per minute: RSS {:+} KiB, fds {:+}, map entries {:+}",
        verdict::MAX_RSS_KIB_PER_MIN,
        verdict::MAX_FDS_PER_MIN,
        verdict::MAX_MAP_ENTRIES_PER_MIN
    ));
    out.push(format!(
        "soak: {:.1} min, {} requests ({} allowed, {} denied, {} escapes, {} errors), {} DNS lookups, \
         {} reloads, {} proposals ({} accepted, {} rate-limited)",
        w.seconds / 60.0,
        w.requests,
        w.allowed,
        w.denied,
        w.escapes,
        w.errors,
        w.dns,
        run.reloads,
        w.proposals,
        w.proposals_accepted,
        w.proposals_limited
    ));
    if let Some(e) = &w.last_error {
        out.push(format!("soak: last workload error: {e}"));
    }
    if minutes < verdict::NOISY_BELOW_MINUTES {
        out.push(format!(
            "soak: note: runs under {} minutes are noisy; the slopes say little",
            verdict::NOISY_BELOW_MINUTES
        ));
    }
    if verdict.passed() {
        out.push("soak: verdict: flat".into());
    } else {
        out.push(format!(
            "soak: verdict: {}",
            if verdict.flat { "FAILED" } else { "GROWING" }
        ));
        out.extend(verdict.problems.iter().map(|p| format!("  - {p}")));
    }
    out
}

fn sample_json(s: &Sample) -> Value {
    let maps: serde_json::Map<String, Value> =
        s.maps.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
    json!({
        "seconds": (s.seconds * 10.0).round() / 10.0,
        "rss_kib": s.rss_kib,
        "fds": s.fds,
        "map_entries": s.map_entries,
        "maps": maps,
        "connections_active": s.connections_active,
    })
}

/// Everything the adversarial report and a later reader need.
#[allow(clippy::too_many_arguments)]
pub fn json(
    minutes: f64,
    samples: &[Sample],
    after: Option<&Sample>,
    warmup: usize,
    slopes: &Slopes,
    run: &Run,
    verdict: &Verdict,
    finished: &str,
) -> Value {
    let w = &run.workload;
    let per_map: serde_json::Map<String, Value> = slopes
        .per_map
        .iter()
        .map(|(n, s)| (n.clone(), json!(s)))
        .collect();
    json!({
        "minutes": minutes,
        "workload_seconds": w.seconds,
        "requests": w.requests,
        "allowed": w.allowed,
        "denied": w.denied,
        "escapes": w.escapes,
        "errors": w.errors,
        "last_error": w.last_error,
        "dns_lookups": w.dns,
        "reloads": run.reloads,
        "reload_failures": run.reload_failures,
        "proposals": w.proposals,
        "proposals_accepted": w.proposals_accepted,
        "proposals_rate_limited": w.proposals_limited,
        "agent_died": run.agent_died,
        "warmup_samples": warmup,
        "samples": samples.iter().map(sample_json).collect::<Vec<_>>(),
        "after_workload": after.map(sample_json),
        "slopes": {
            "rss_kib_per_min": slopes.rss_kib,
            "fds_per_min": slopes.fds,
            "map_entries_per_min": slopes.map_entries,
            "per_map": per_map,
        },
        "bounds": {
            "rss_kib_per_min": verdict::MAX_RSS_KIB_PER_MIN,
            "fds_per_min": verdict::MAX_FDS_PER_MIN,
            "map_entries_per_min": verdict::MAX_MAP_ENTRIES_PER_MIN,
        },
        "flat": verdict.flat,
        "passed": verdict.passed(),
        "problems": verdict.problems,
        "finished": finished,
    })
}

pub fn write(dir: &Path, report: &Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("soak.json");
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Progress;

    #[test]
    fn the_json_carries_what_the_adversarial_report_reads() {
        let samples: Vec<Sample> = (0..4)
            .map(|i| Sample {
                seconds: i as f64 * 5.0,
                rss_kib: 20_480,
                fds: 30,
                maps: vec![("connect_by_cookie".into(), 2)],
                map_entries: Some(2),
                connections_active: Some(1),
            })
            .collect();
        let slopes = Slopes::of(&samples[1..]);
        let run = Run {
            workload: Progress {
                seconds: 120.0,
                requests: 10,
                allowed: 6,
                denied: 4,
                proposals: 2,
                ..Progress::default()
            },
            workload_finished: true,
            reloads: 7,
            ..Run::default()
        };
        let verdict = verdict::judge(&slopes, 3, &run);
        let v = json(
            2.0,
            &samples,
            None,
            1,
            &slopes,
            &run,
            &verdict,
            "2025-01-01T00:00:00Z",
        );
        assert_eq!(v["minutes"], 2.0);
        assert_eq!(
            (&v["requests"], &v["allowed"], &v["denied"]),
            (&json!(10), &json!(6), &json!(4))
        );
        assert_eq!((&v["reloads"], &v["proposals"]), (&json!(7), &json!(2)));
        assert_eq!(v["slopes"]["rss_kib_per_min"], 0.0);
        assert_eq!(v["slopes"]["per_map"]["connect_by_cookie"], 0.0);
        assert_eq!(v["samples"][3]["maps"]["connect_by_cookie"], 2);
        assert_eq!(v["flat"], true);
        assert_eq!(v["passed"], true);
        let row = row(&samples[0], 10, 7);
        assert!(row.contains("20.0"), "{row}");
        let text = summary(1.0, &samples, 1, &slopes, &run, &verdict).join("\n");
        assert!(text.contains("noisy"), "{text}");
        assert!(text.contains("verdict: flat"), "{text}");
    }
}
