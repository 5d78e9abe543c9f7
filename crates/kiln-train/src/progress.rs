//! What a person watching the run sees: an indicatif bar on a terminal, plain periodic log lines
//! (through `tracing`) otherwise, e.g. in cluster job logs.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's progress display: a bar on a terminal, log lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    /// Workers other than rank 0 show nothing.
    quiet: bool,
}

impl Progress {
    /// A bar when stderr is a terminal (logs share stderr; stdout carries results).
    pub fn new(total_steps: usize, start_step: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps as u64),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} step {pos}/{len} [{bar:30}] {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(start_step as u64);
            bar
        });
        Self {
            bar,
            total: total_steps,
            quiet: false,
        }
    }

    /// Shows nothing (data-parallel workers other than rank 0).
    pub fn quiet() -> Self {
        Self {
            bar: None,
            total: 0,
            quiet: true,
        }
    }

    /// Reports a finished step; `summary` is set on logging steps.
    pub fn step(&self, step: usize, summary: Option<&str>) {
        if self.quiet {
            return;
        }
        match (&self.bar, summary) {
            (Some(bar), Some(s)) => {
                bar.set_message(s.to_string());
                bar.set_position(step as u64);
            }
            (Some(bar), None) => bar.set_position(step as u64),
            (None, Some(s)) => tracing::info!("step {step}/{}: {s}", self.total),
            (None, None) => {}
        }
    }

    /// Logs a message without tearing the bar.
    pub fn message(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::info!("{text}")),
            None => tracing::info!("{text}"),
        }
    }

    /// Removes the bar (at the end of the run).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
