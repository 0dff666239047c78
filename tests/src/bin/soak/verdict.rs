//! Samples, their slopes and the verdict: pure, so it is unit tested.

use crate::workload::Progress;

/// Growth allowed per minute, after the warm-up. A leak shows up as
/// steady growth; these bounds sit above the jitter of a healthy agent
/// under the soak's load (a few hundred connections a second on a
/// two-core machine) and below what one leaked object per request adds.
///
/// File descriptors: each sample catches a different number of
/// connections in flight, a few either way; one leaked socket per
/// thousand connections would add well over 2 a minute.
pub const MAX_FDS_PER_MIN: f64 = 2.0;
/// Map entries: the connection maps hold one entry per connection in
/// flight, with the same jitter as the descriptors, plus entries that
/// expire a little after their connection closes; a map that misses its
/// deletions grows by hundreds a minute.
pub const MAX_MAP_ENTRIES_PER_MIN: f64 = 5.0;
/// RSS: the allocator keeps freed memory and reaches its high-water mark
/// slowly, so RSS creeps for a while even without a leak; 1 MiB a minute
/// is about 100 bytes kept per request at the soak's rate.
pub const MAX_RSS_KIB_PER_MIN: f64 = 1024.0;
/// Failed operations (timeouts, unexpected statuses) tolerated, as a share
/// of all operations: the odd timeout on a loaded machine is noise, a
/// steady failure rate is a defect.
pub const MAX_ERROR_SHARE: f64 = 0.01;
/// Samples kept for the slopes, whatever the warm-up.
pub const MIN_KEPT: usize = 3;
/// Runs shorter than this give slopes dominated by noise.
pub const NOISY_BELOW_MINUTES: f64 = 2.0;

/// One look at the agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Since the workload started.
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// Entries per kernel map, in the order `portcullis status` prints them.
    pub maps: Vec<(String, u64)>,
    /// Their sum; `None` when the agent reports no map entries.
    pub map_entries: Option<u64>,
    pub connections_active: Option<u64>,
}

/// How many leading samples are warm-up: the first 20 % or the first
/// minute, whichever is fewer, leaving at least [`MIN_KEPT`].
pub fn warmup(samples: &[Sample]) -> usize {
    let fifth = samples.len() / 5;
    let first_minute = samples.iter().take_while(|s| s.seconds < 60.0).count();
    fifth
        .min(first_minute)
        .min(samples.len().saturating_sub(MIN_KEPT))
}

/// Least-squares slope of `y` over `x`; `None` with fewer than two points
/// or no spread in `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Growth per minute over the samples after the warm-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slopes {
    pub rss_kib: Option<f64>,
    pub fds: Option<f64>,
    pub map_entries: Option<f64>,
    pub per_map: Vec<(String, f64)>,
}

impl Slopes {
    pub fn of(kept: &[Sample]) -> Slopes {
        let per_minute = |value: &dyn Fn(&Sample) -> Option<u64>| -> Option<f64> {
            let points: Option<Vec<(f64, f64)>> = kept
                .iter()
                .map(|s| Some((s.seconds / 60.0, value(s)? as f64)))
                .collect();
            slope(&points?)
        };
        let names: Vec<String> = kept
            .first()
            .map(|s| s.maps.iter().map(|(name, _)| name.clone()).collect())
            .unwrap_or_default();
        let per_map = names
            .into_iter()
            .filter_map(|name| {
                let entries = |s: &Sample| s.maps.iter().find(|(n, _)| *n == name).map(|m| m.1);
                Some((name.clone(), per_minute(&entries)?))
            })
            .collect();
        Slopes {
            rss_kib: per_minute(&|s| Some(s.rss_kib)),
            fds: per_minute(&|s| Some(s.fds)),
            map_entries: per_minute(&|s| s.map_entries),
            per_map,
        }
    }

    /// Within every bound; a figure that could not be measured is not flat.
    pub fn flat(&self) -> bool {
        self.growing().is_empty()
    }

    /// What grew past its bound, or could not be measured.
    pub fn growing(&self) -> Vec<String> {
        let checks = [
            ("RSS", self.rss_kib, MAX_RSS_KIB_PER_MIN, " KiB"),
            ("file descriptors", self.fds, MAX_FDS_PER_MIN, ""),
            ("map entries", self.map_entries, MAX_MAP_ENTRIES_PER_MIN, ""),
        ];
        checks
            .iter()
            .filter_map(|&(what, slope, max, unit)| match slope {
                None => Some(format!("{what}: not measured")),
                Some(s) if s > max => Some(format!(
                    "{what} grow {s:+.1}{unit}/min (at most {max:+}{unit}/min)"
                )),
                Some(_) => None,
            })
            .collect()
    }
}

/// What the run saw besides the samples.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub agent_died: bool,
    pub workload: Progress,
    /// Whether the workload ran to its deadline and said so.
    pub workload_finished: bool,
    pub reloads: u64,
    /// One message per failed reload.
    pub reload_failures: Vec<String>,
}

/// The outcome: the slopes must be flat and the run sound.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub flat: bool,
    /// Every reason the run fails, growth included; empty when it passes.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn judge(slopes: &Slopes, kept: usize, run: &Run) -> Verdict {
    let mut problems = Vec::new();
    if run.agent_died {
        problems.push("the agent died".to_string());
    }
    if kept < 2 {
        problems.push(format!(
            "{kept} samples after the warm-up: too few for a slope"
        ));
    }
    problems.extend(slopes.growing());
    let w = &run.workload;
    if !run.workload_finished {
        problems.push(format!(
            "the workload stopped after {:.0} s instead of running to its deadline",
            w.seconds
        ));
    }
    if w.allowed == 0 {
        problems.push("the workload saw no allowed request".into());
    }
    if w.denied == 0 {
        problems.push("the workload saw no denied request".into());
    }
    if w.escapes > 0 {
        problems.push(format!(
            "{} denied requests were answered 2xx (escapes)",
            w.escapes
        ));
    }
    let operations = w.requests + w.dns + w.proposals;
    if w.errors as f64 > MAX_ERROR_SHARE * operations as f64 {
        problems.push(format!(
            "{} of {operations} operations failed (at most {:.0} %); last: {}",
            w.errors,
            MAX_ERROR_SHARE * 100.0,
            w.last_error.as_deref().unwrap_or("?")
        ));
    }
    if !run.reload_failures.is_empty() {
        problems.push(format!(
            "{} of {} reloads failed; first: {}",
            run.reload_failures.len(),
            run.reloads + run.reload_failures.len() as u64,
            run.reload_failures[0]
        ));
    }
    Verdict {
        flat: slopes.flat(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, rss_kib: u64, fds: u64, maps: &[(&str, u64)]) -> Sample {
        let maps: Vec<(String, u64)> = maps.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        Sample {
            seconds,
            rss_kib,
            fds,
            map_entries: Some(maps.iter().map(|m| m.1).sum()),
            maps,
            connections_active: Some(0),
        }
    }

    fn every_5s(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| sample(i as f64 * 5.0, 20_000, 30, &[("a", 1)]))
            .collect()
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        // Noise around a flat line averages out.
        let s = slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 8.0), (3.0, 10.0)]).unwrap();
        assert!(s.abs() < 1.0, "{s}");
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn warmup_is_a_fifth_or_a_minute_and_keeps_three() {
        // 5 minutes: 61 samples, a fifth (12) = the first minute (12).
        assert_eq!(warmup(&every_5s(61)), 12);
        // 10 minutes: a fifth would be 24, the first minute is 12.
        assert_eq!(warmup(&every_5s(121)), 12);
        // 2 minutes: a fifth, 5.
        assert_eq!(warmup(&every_5s(25)), 5);
        // Too few to drop anything and keep three.
        assert_eq!(warmup(&every_5s(3)), 0);
        assert_eq!(warmup(&every_5s(0)), 0);
    }

    #[test]
    fn slopes_are_per_minute_and_per_map() {
        let samples: Vec<Sample> = (0..13)
            .map(|i| {
                let t = i as f64 * 5.0;
                sample(
                    t,
                    10_000 + i * 100,
                    40,
                    &[("cookie", 5 + i), ("cgroups", 1)],
                )
            })
            .collect();
        let s = Slopes::of(&samples);
        // 100 KiB per 5 s is 1200 KiB per minute.
        assert!((s.rss_kib.unwrap() - 1200.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.fds, Some(0.0));
        assert!((s.map_entries.unwrap() - 12.0).abs() < 1e-6);
        assert_eq!(s.per_map[0].0, "cookie");
        assert!((s.per_map[0].1 - 12.0).abs() < 1e-6);
        assert_eq!(s.per_map[1], ("cgroups".to_string(), 0.0));
        let growing = s.growing();
        assert_eq!(growing.len(), 2, "{growing:?}");
        assert!(
            growing[0].starts_with("RSS grow +1200.0 KiB/min"),
            "{growing:?}"
        );
        assert!(
            growing[1].starts_with("map entries grow +12.0/min"),
            "{growing:?}"
        );
    }

    fn good_run() -> Run {
        Run {
            agent_died: false,
            workload: Progress {
                seconds: 120.0,
                requests: 1000,
                allowed: 600,
                denied: 400,
                dns: 200,
                proposals: 12,
                done: true,
                ..Progress::default()
            },
            workload_finished: true,
            reloads: 40,
            reload_failures: Vec::new(),
        }
    }

    #[test]
    fn a_flat_sound_run_passes() {
        let flat = Slopes::of(&every_5s(25));
        let v = judge(&flat, 20, &good_run());
        assert_eq!(
            v,
            Verdict {
                flat: true,
                problems: vec![]
            }
        );
        assert!(v.passed());
    }

    #[test]
    fn an_unsound_run_fails_even_when_flat() {
        let flat = Slopes::of(&every_5s(25));
        let mut run = good_run();
        run.agent_died = true;
        run.workload.denied = 0;
        run.workload.errors = 50;
        run.workload.last_error = Some("GET /public: timed out".into());
        run.reload_failures = vec!["exit status 1: invalid policy".into()];
        let v = judge(&flat, 20, &run);
        assert!(v.flat);
        let text = v.problems.join("\n");
        assert!(text.contains("the agent died"), "{text}");
        assert!(text.contains("no denied request"), "{text}");
        assert!(text.contains("50 of 1212 operations failed"), "{text}");
        assert!(text.contains("1 of 41 reloads failed"), "{text}");
    }

    #[test]
    fn unmeasured_map_entries_are_not_flat() {
        let mut samples = every_5s(25);
        for s in &mut samples {
            s.map_entries = None;
            s.maps.clear();
        }
        let v = judge(&Slopes::of(&samples), 20, &good_run());
        assert!(!v.flat);
        assert_eq!(v.problems, vec!["map entries: not measured".to_string()]);
    }
}
