//! The progress bar of `meshflow bench` (on a terminal only: indicatif draws nothing when
//! stderr is not one, so CI logs and redirected runs keep only the one-line summaries).
//!
//! A scenario runs for `--duration` (or until `--max-steps`), so its bar is the time gone of
//! the time it runs, with the events taken so far and their rate; the phases around it (the
//! initial sync, the clients, the wait for the last batches, the verify) show as a spinner
//! naming the phase.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One scenario's bar.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    duration: Duration,
    limit: Option<u64>,
}

fn spinner() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix}: {spinner} {msg} [{elapsed}]").expect("a valid template")
}

impl Progress {
    /// A spinner for `scenario` in `phase`, drawn on stderr at most 10 times a second.
    pub fn start(scenario: &str, phase: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(spinner());
        bar.set_prefix(scenario.to_string());
        bar.set_message(phase.to_string());
        // No ticker thread when nothing is drawn (its CPU would count in the report's).
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        Progress { bar, started: Instant::now(), duration: Duration::ZERO, limit: None }
    }

    /// Says the scenario is in a new phase.
    pub fn phase(&self, phase: &str) {
        if self.bar.length().is_some() {
            self.bar.set_style(spinner());
            self.bar.unset_length();
        }
        self.bar.set_message(phase.to_string());
    }

    /// Turns the spinner into the bar of the steps: `duration` long, or `limit` steps when that
    /// comes first.
    pub fn steps(&mut self, duration: Duration, limit: Option<u64>) {
        self.started = Instant::now();
        self.duration = duration;
        self.limit = limit;
        self.bar.set_style(
            ProgressStyle::with_template("  {prefix}: [{bar:30}] {percent:>3}% {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        self.bar.set_length(100);
        self.bar.set_position(0);
        self.bar.set_message("0 events");
    }

    /// After `n` steps taken.
    pub fn step(&self, n: u64) {
        // Not on every step: at 50,000 steps/s the bar's bookkeeping would show in the figures.
        if !n.is_multiple_of(64) {
            return;
        }
        let elapsed = self.started.elapsed();
        let by_time = elapsed.as_secs_f64() / self.duration.as_secs_f64().max(1e-9);
        let by_steps = self.limit.map_or(0.0, |l| n as f64 / l.max(1) as f64);
        self.bar.set_position((by_time.max(by_steps).min(1.0) * 100.0) as u64);
        let rate = n as f64 / elapsed.as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{n} events, {rate:.0}/s"));
    }

    /// Clears the bar (the caller prints the summary line).
    pub fn finish(self) {}
}

impl Drop for Progress {
    /// Cleared on every way out, an error's too.
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
