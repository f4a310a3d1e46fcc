//! What `tally import` shows while it runs and when it ends: an `indicatif` progress bar when
//! stderr is a terminal (bytes of the input files, events/s, ETA), else a plain line on stderr
//! every 5 s; then the summary (stderr) and one summary line (stdout).

use std::fmt;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::reader::ReadCount;

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Records so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read (valid or not).
    pub read: u64,
    /// Events Kafka acknowledged.
    pub accepted: u64,
    /// Records rejected (invalid, or refused by Kafka as too large).
    pub rejected: u64,
}

/// Progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    total_bytes: u64,
    read: Arc<ReadCount>,
}

impl Progress {
    /// Progress over `total_bytes` of input, read as `read.bytes` grows.
    pub fn new(total_bytes: u64, read: Arc<ReadCount>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                 {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            started: now,
            last_line: now,
            total_bytes,
            read,
        }
    }

    /// Updates the bar, or writes a line when the last one is 5 s old.
    pub fn show(&mut self, counts: &Counts) {
        let bytes = self.read.bytes.load(Ordering::Relaxed);
        let rate = per_sec(counts.accepted, self.started.elapsed());
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            bar.set_message(format!(
                "{} accepted, {} rejected, {rate:.0} events/s",
                counts.accepted, counts.rejected
            ));
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let share = 100.0 * bytes as f64 / self.total_bytes.max(1) as f64;
            eprintln!(
                "import: {} of {} read ({share:.0}%), {} records, {} accepted, {} rejected, \
                 {rate:.0} events/s",
                HumanBytes(bytes),
                HumanBytes(self.total_bytes),
                counts.read,
                counts.accepted,
                counts.rejected
            );
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-3)
}

/// How an import ended, for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every file was read to its end.
    Finished,
    /// Ctrl-C or SIGTERM stopped the reading.
    Interrupted,
    /// An error stopped it (printed after the summary).
    Failed,
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Files opened.
    pub files: usize,
    /// Records.
    pub counts: Counts,
    /// Wall time.
    pub elapsed: Duration,
    /// The rejects file, when anything was rejected.
    pub rejects: Option<PathBuf>,
    /// How it ended.
    pub ending: Ending,
}

impl Summary {
    /// The summary for stderr.
    pub fn long(&self) -> String {
        let ending = match self.ending {
            Ending::Finished => "finished",
            Ending::Interrupted => "interrupted (in-flight events were waited for)",
            Ending::Failed => "stopped by an error",
        };
        let c = self.counts;
        let rejects = self
            .rejects
            .as_ref()
            .map(|p| format!(" (written to {})", p.display()))
            .unwrap_or_default();
        format!(
            "import {ending}: {} files, {} records read, {} accepted, {} rejected{rejects}, \
             {:.2} s, {:.0} events/s",
            self.files,
            c.read,
            c.accepted,
            c.rejected,
            self.elapsed.as_secs_f64(),
            per_sec(c.accepted, self.elapsed)
        )
    }
}

/// The one line for stdout, e.g. `imported 9990 events (10 rejected) from 3 files in 2.31 s`,
/// then `; rejects in FILE` when something was rejected, prefixed with `interrupted: ` or
/// `failed: ` when the import did not finish.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ending {
            Ending::Finished => {}
            Ending::Interrupted => f.write_str("interrupted: ")?,
            Ending::Failed => f.write_str("failed: ")?,
        }
        write!(
            f,
            "imported {} events ({} rejected) from {} files in {:.2} s",
            self.counts.accepted,
            self.counts.rejected,
            self.files,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(path) = &self.rejects {
            write!(f, "; rejects in {}", path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let mut s = Summary {
            files: 3,
            counts: Counts {
                read: 10,
                accepted: 8,
                rejected: 2,
            },
            elapsed: Duration::from_millis(2_000),
            rejects: Some(PathBuf::from("r.jsonl")),
            ending: Ending::Finished,
        };
        assert_eq!(
            s.to_string(),
            "imported 8 events (2 rejected) from 3 files in 2.00 s; rejects in r.jsonl"
        );
        assert_eq!(
            s.long(),
            "import finished: 3 files, 10 records read, 8 accepted, 2 rejected (written to \
             r.jsonl), 2.00 s, 4 events/s"
        );
        (s.ending, s.rejects) = (Ending::Interrupted, None);
        assert_eq!(
            s.to_string(),
            "interrupted: imported 8 events (2 rejected) from 3 files in 2.00 s"
        );
    }
}
