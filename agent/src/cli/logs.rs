//! `portcullis logs NAME [--follow] [--json]`: a sandbox's audit events.
//!
//! The writer appends each event to both daily files, the OCSF JSON line
//! and its shorthand line, in the same order; so line N of one file is
//! line N of the other, and the JSON says which sandbox a line is about.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    audit::writer::{OCSF_PREFIX, SHORTHAND_PREFIX},
    config::AgentConfig,
};

#[derive(Args)]
pub struct LogsArgs {
    sandbox: String,
    /// Keep printing new events as they are written.
    #[arg(long, short)]
    follow: bool,
    /// Print OCSF JSON lines instead of the shorthand.
    #[arg(long)]
    json: bool,
}

/// Dates for which an OCSF file exists, oldest first.
fn dates(dir: &Path) -> Result<Vec<String>> {
    let mut dates: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading log directory {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let date = name
                .strip_prefix(&format!("{OCSF_PREFIX}."))?
                .strip_suffix(".log")?
                .to_string();
            Some(date)
        })
        .collect();
    dates.sort();
    Ok(dates)
}

/// One day's pair of files, read line by line in step.
struct DayReader {
    ocsf: BufReader<File>,
    shorthand: Option<BufReader<File>>,
    pending_json: String,
    pending_text: String,
}

impl DayReader {
    fn open(dir: &Path, date: &str) -> Result<Self> {
        let ocsf = dir.join(format!("{OCSF_PREFIX}.{date}.log"));
        let shorthand = dir.join(format!("{SHORTHAND_PREFIX}.{date}.log"));
        Ok(Self {
            ocsf: BufReader::new(
                File::open(&ocsf).with_context(|| format!("opening {}", ocsf.display()))?,
            ),
            shorthand: File::open(shorthand).ok().map(BufReader::new),
            pending_json: String::new(),
            pending_text: String::new(),
        })
    }

    /// The next complete (JSON, shorthand) pair, if both have been written.
    /// A half-written pair stays pending for the next call.
    fn next_pair(&mut self) -> Result<Option<(String, Option<String>)>> {
        if !self.pending_json.ends_with('\n')
            && !complete_line(&mut self.ocsf, &mut self.pending_json)?
        {
            return Ok(None);
        }
        let text = match &mut self.shorthand {
            Some(reader) => {
                if !complete_line(reader, &mut self.pending_text)? {
                    return Ok(None);
                }
                Some(std::mem::take(&mut self.pending_text))
            }
            None => None,
        };
        Ok(Some((std::mem::take(&mut self.pending_json), text)))
    }
}

/// Appends to `buf` until it holds a whole line; false if the file ends first.
fn complete_line(reader: &mut impl BufRead, buf: &mut String) -> Result<bool> {
    reader.read_line(buf)?;
    Ok(buf.ends_with('\n'))
}

fn print_matching(reader: &mut DayReader, sandbox: &str, json: bool) -> Result<()> {
    while let Some((line, text)) = reader.next_pair()? {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line.trim_end()) else {
            continue;
        };
        if event["unmapped"]["sandbox"] != sandbox {
            continue;
        }
        match (json, text) {
            (false, Some(text)) => print!("{text}"),
            _ => print!("{line}"),
        }
    }
    Ok(())
}

pub fn run(config: &AgentConfig, args: LogsArgs) -> Result<ExitCode> {
    let dir: PathBuf = config.log_dir.clone();
    let days = dates(&dir)?;
    let mut current: Option<(String, DayReader)> = None;
    for date in &days {
        let mut reader = DayReader::open(&dir, date)?;
        print_matching(&mut reader, &args.sandbox, args.json)?;
        current = Some((date.clone(), reader));
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        if let Some((_, reader)) = &mut current {
            print_matching(reader, &args.sandbox, args.json)?;
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(200));
        // A new day opens a new pair of files.
        let now = dates(&dir)?;
        if let Some(newest) = now.last()
            && current.as_ref().map(|(d, _)| d) != Some(newest)
        {
            if let Some((_, reader)) = &mut current {
                print_matching(reader, &args.sandbox, args.json)?;
            }
            current = Some((newest.clone(), DayReader::open(&dir, newest)?));
        }
    }
}
