//! `kiln drift`: compares a file of inputs with the training data an export was made from.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::Backend;
use kiln_drift::{Options, Report};
use kiln_export::drift::{self, Observations};
use kiln_export::predict::{self, Task};
use serde_json::json;

use super::{on_device, OnDevice};
use crate::args::BackendArgs;

/// Compare inputs with the export's training data: per feature a two-sample Kolmogorov-Smirnov
/// test (numbers) or a chi-square test (categories) with its PSI or Jensen-Shannon distance,
/// the model's predictions against its predictions on the test split, and the verdict.
///
/// A feature drifts when its p-value is below --alpha divided by the number of tests
/// (Bonferroni); the data set drifts when at least --share of its features drift or the
/// predictions do. Text compares its token frequencies by Jensen-Shannon distance (drift at
/// 0.1) and the model's surprise on its windows by the KS test.
#[derive(clap::Args)]
pub struct Args {
    /// The export's directory (from `kiln export --format kiln`).
    export: PathBuf,
    /// Inputs: images (.png / .jpg / .jpeg) or folders of them, IDX image files
    /// (.idx / *-ubyte / .gz), table rows (.csv / .parquet), or text files for a language model.
    #[arg(required = true)]
    data: Vec<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// The significance level of the whole report, divided among its tests.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// The share of drifting features at which the data set drifts.
    #[arg(long, default_value_t = 0.5)]
    share: f64,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Prints the drift report of the inputs.
pub fn exec(args: Args) -> Result<()> {
    ensure!(
        args.alpha > 0.0 && args.alpha < 1.0,
        "--alpha {}: give a significance level between 0 and 1 (default 0.05)",
        args.alpha
    );
    ensure!(
        args.share > 0.0 && args.share <= 1.0,
        "--share {}: give a share of features above 0 and at most 1 (default 0.5)",
        args.share
    );
    let kind = args.backend.kind()?;
    on_device(kind, args)
}

impl OnDevice for Args {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let loaded = predict::load::<B>(&self.export, &device)?;
        let Some(reference) = drift::read_reference(&self.export, &loaded.manifest)? else {
            bail!(
                "{}: {}",
                self.export.display(),
                drift::no_reference(&loaded.manifest)
            );
        };
        let mut observed = Observations::new(&reference, usize::MAX);
        match &loaded.task {
            Task::Samples { .. } => {
                let records = predict::read_samples(&loaded.task, &self.data)?;
                drift::observe_records(&loaded, &reference, &records, &mut observed, &device)?;
            }
            Task::Language { .. } => {
                for path in &self.data {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
                    drift::observe_text(&loaded, &reference, &text, &mut observed, &device)?;
                }
            }
        }
        ensure!(
            !observed.is_empty(),
            "the inputs hold nothing to compare (for text: no token)"
        );
        if observed.len() < reference.min_tokens() {
            tracing::warn!(
                "the text has {} tokens; comparing token frequencies takes at least {} (below, the distance is mostly noise)",
                observed.len(),
                reference.min_tokens()
            );
        }
        let options = Options {
            alpha: self.alpha,
            share: self.share,
        };
        let report = reference.report(&observed, options);
        let mut out = std::io::stdout().lock();
        if self.json {
            let json = json!({
                "export": self.export,
                "samples": observed.len(),
                "predictions": observed.predictions.len(),
                "reference_rows": reference.reference_rows,
                "report": report,
            });
            writeln!(out, "{json}")?;
        } else {
            print_report(&mut out, &report, observed.len())?;
        }
        Ok(())
    }
}

/// The report as a table, one feature a line, and the verdict.
fn print_report(out: &mut dyn Write, report: &Report, samples: usize) -> Result<()> {
    writeln!(
        out,
        "{:<24} {:<14} {:>10} {:>10} {:>8}  drift",
        "feature", "test", "statistic", "p-value", "psi/js"
    )?;
    for f in report.features.iter().chain(&report.prediction) {
        let distance = f.psi.or(f.jensen_shannon).unwrap_or(f64::NAN);
        writeln!(
            out,
            "{:<24} {:<14} {:>10.4} {:>10.3e} {:>8.4}  {}",
            f.name,
            f.test,
            f.statistic,
            f.p_value,
            distance,
            if f.drifted { "DRIFT" } else { "-" }
        )?;
    }
    writeln!(
        out,
        "{samples} samples; {} of {} features drift (share {:.2}, threshold {}); each test at level {:.3e} (Bonferroni of {}); data set drift: {}",
        report.drifted_features,
        report.features.len(),
        report.drifted_share,
        report.options.share,
        report.corrected_alpha,
        report.options.alpha,
        if report.dataset_drift { "YES" } else { "no" }
    )?;
    Ok(())
}
