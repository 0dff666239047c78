//! The benchmark report: measured rows, the targets judged against
//! them, printed as a table and written as JSON.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// One measurement: a path (direct, sandboxed, squid...) through one
/// scenario. `ratio` compares it with the direct path of the same run.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub path: String,
    pub value: f64,
    pub unit: &'static str,
    pub ratio: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

impl Row {
    pub fn new(scenario: &'static str, path: &str, value: f64, unit: &'static str) -> Row {
        Row {
            scenario,
            path: path.to_string(),
            value,
            unit,
            ratio: None,
            p50_us: None,
            p99_us: None,
        }
    }

    pub fn ratio(mut self, ratio: f64) -> Row {
        self.ratio = Some(ratio);
        self
    }

    pub fn latency(mut self, p50_us: Option<f64>, p99_us: Option<f64>) -> Row {
        self.p50_us = p50_us;
        self.p99_us = p99_us;
        self
    }
}

/// Whether a target held: `Met`/`Missed` with the figure it was judged
/// on, or `NotMeasured` with the reason.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Met(String),
    Missed(String),
    NotMeasured(String),
}

impl Outcome {
    /// Judges `measured` against a lower bound (`at_least`) or an upper
    /// bound; `shown` is how the figure reads in the report.
    pub fn judge(measured: f64, bound: f64, at_least: bool, shown: String) -> Outcome {
        let holds = if at_least {
            measured >= bound
        } else {
            measured <= bound
        };
        if holds {
            Outcome::Met(shown)
        } else {
            Outcome::Missed(shown)
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Met(_) => "met",
            Outcome::Missed(_) => "MISSED",
            Outcome::NotMeasured(_) => "not measured",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Met(s) | Outcome::Missed(s) | Outcome::NotMeasured(s) => s,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Verdict {
    pub scenario: &'static str,
    pub target: &'static str,
    pub outcome: Outcome,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub verdicts: Vec<Verdict>,
    /// Scenarios that could not run, with why.
    pub errors: Vec<String>,
}

impl Report {
    pub fn row(&mut self, row: Row) {
        println!("  {}", format_row(&row));
        self.rows.push(row);
    }

    pub fn verdict(&mut self, scenario: &'static str, target: &'static str, outcome: Outcome) {
        self.verdicts.push(Verdict {
            scenario,
            target,
            outcome,
        });
    }

    pub fn error(&mut self, scenario: &'static str, why: String) {
        eprintln!("bench: {scenario}: {why}");
        self.errors.push(format!("{scenario}: {why}"));
    }

    pub fn print(&self) {
        println!();
        println!("{}", header());
        for row in &self.rows {
            println!("{}", format_row(row));
        }
        println!();
        println!(
            "{:<28} {:<34} {:<13} measured",
            "scenario", "target", "result"
        );
        for v in &self.verdicts {
            println!(
                "{:<28} {:<34} {:<13} {}",
                v.scenario,
                v.target,
                v.outcome.label(),
                v.outcome.detail()
            );
        }
        for e in &self.errors {
            println!("error: {e}");
        }
        println!(
            "ratio = sandboxed / direct for the same work, measured in this run (1.0 = no cost)"
        );
    }

    pub fn to_json(&self, context: Value) -> Value {
        let opt = |v: Option<f64>| v.map_or(Value::Null, |v| json!(v));
        json!({
            "context": context,
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "path": r.path,
                "value": r.value,
                "unit": r.unit,
                "ratio_to_direct": opt(r.ratio),
                "p50_us": opt(r.p50_us),
                "p99_us": opt(r.p99_us),
            })).collect::<Vec<_>>(),
            "targets": self.verdicts.iter().map(|v| json!({
                "scenario": v.scenario,
                "target": v.target,
                "result": match v.outcome {
                    Outcome::Met(_) => "met",
                    Outcome::Missed(_) => "missed",
                    Outcome::NotMeasured(_) => "not_measured",
                },
                "measured": v.outcome.detail(),
            })).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }

    /// Writes `bench-STAMP.json` and `latest.json` under `dir`.
    pub fn write(&self, dir: &Path, stamp: &str, context: Value) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_string_pretty(&self.to_json(context))? + "\n";
        let path = dir.join(format!("bench-{stamp}.json"));
        std::fs::write(&path, &text)?;
        std::fs::write(dir.join("latest.json"), &text)?;
        Ok(path)
    }
}

pub fn header() -> String {
    format!(
        "{:<24} {:<26} {:>14} {:<8} {:>7} {:>10} {:>10}",
        "scenario", "path", "value", "unit", "ratio", "p50", "p99"
    )
}

fn format_row(r: &Row) -> String {
    let latency = |v: Option<f64>| v.map_or("-".to_string(), format_us);
    format!(
        "{:<24} {:<26} {:>14} {:<8} {:>7} {:>10} {:>10}",
        r.scenario,
        r.path,
        format_value(r.value),
        r.unit,
        r.ratio.map_or("-".to_string(), |x| format!("{x:.3}")),
        latency(r.p50_us),
        latency(r.p99_us),
    )
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn format_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.1}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_in_the_right_direction() {
        assert_eq!(
            Outcome::judge(0.85, 0.8, true, "0.85".into()),
            Outcome::Met("0.85".into())
        );
        assert_eq!(
            Outcome::judge(0.79, 0.8, true, "0.79".into()),
            Outcome::Missed("0.79".into())
        );
        assert_eq!(
            Outcome::judge(2.5, 2.0, false, "2.5us".into()),
            Outcome::Missed("2.5us".into())
        );
        assert_eq!(
            Outcome::judge(1.5, 2.0, false, "1.5us".into()),
            Outcome::Met("1.5us".into())
        );
    }

    #[test]
    fn json_keeps_rows_targets_and_errors() {
        let mut report = Report::default();
        report.rows.push(
            Row::new("2 L7 keep-alive", "sandbox", 1000.0, "req/s")
                .ratio(0.5)
                .latency(Some(100.0), None),
        );
        report.verdict(
            "2 L7 keep-alive",
            "req/s ratio >= 0.5",
            Outcome::Missed("0.45".into()),
        );
        report.errors.push("8 squid: not installed".into());
        let v = report.to_json(json!({"cores": 2}));
        assert_eq!(v["rows"][0]["ratio_to_direct"], 0.5);
        assert_eq!(v["rows"][0]["p99_us"], Value::Null);
        assert_eq!(v["targets"][0]["result"], "missed");
        assert_eq!(v["errors"][0], "8 squid: not installed");
        assert_eq!(v["context"]["cores"], 2);
    }
}
