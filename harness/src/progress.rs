//! Progress for long steps: timed step lines on stderr ("==> building … done in 12.3 s"),
//! and a spinner when stderr is a terminal. Steps may run at the same time (the base image is
//! made while cargo builds the node binaries): each has its own spinner line.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The spinners of every running step, drawn together on stderr.
fn spinners() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// One long step. Finish it with [`Step::done`]; dropping it unfinished reports a failure.
pub struct Step {
    what: String,
    start: Instant,
    bar: Option<ProgressBar>,
    finished: bool,
}

impl Step {
    /// Starts a step and prints its line.
    pub fn start(what: impl Into<String>) -> Step {
        let what = what.into();
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = spinners().add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.set_message(what.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("==> {what} …");
            None
        };
        Step {
            what,
            start: Instant::now(),
            bar,
            finished: false,
        }
    }

    /// Shows a detail (the latest output line of the step).
    pub fn detail(&self, line: &str) {
        if let Some(bar) = &self.bar {
            let line: String = line.chars().take(100).collect();
            bar.set_message(format!("{}: {line}", self.what));
        }
    }

    /// Prints a line without breaking the spinner.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("    {line}"),
        }
    }

    /// Ends the step successfully and returns its duration.
    pub fn done(mut self) -> Duration {
        self.finish("done");
        self.start.elapsed()
    }

    /// Ends the step with a note instead of "done" (e.g. "cached").
    pub fn done_with(mut self, note: &str) -> Duration {
        self.finish(note);
        self.start.elapsed()
    }

    fn finish(&mut self, note: &str) {
        self.finished = true;
        let line = format!(
            "==> {} … {note} in {:.1} s",
            self.what,
            self.start.elapsed().as_secs_f64()
        );
        match self.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                spinners().remove(&bar);
                spinners().suspend(|| eprintln!("{line}"));
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            self.finish("FAILED");
        }
    }
}
