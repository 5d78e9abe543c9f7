//! `kiln runs`: the runs under a directory as a table, one row each: name, status, steps, time,
//! the best validation metric and the final test metric, and the hyperparameters that differ
//! between them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::record::Record;
use crate::tracker::{params_of, Param};

/// One run of the table.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    /// `run.name`.
    pub name: String,
    /// The run directory.
    pub dir: PathBuf,
    /// `finished` (tested after its last step) or `stopped` (interrupted, paused or running).
    pub status: &'static str,
    /// The last step logged.
    pub step: u64,
    /// Of `train.max_steps`, when the config sets it.
    pub max_steps: Option<u64>,
    /// Seconds of training logged (the train windows' sum).
    pub train_secs: f64,
    /// The metric that picks the best checkpoint (`checkpoint.best_metric`, e.g. `loss`).
    pub best_metric: String,
    /// The best validation value of it, and its step.
    pub best_valid: Option<(f64, u64)>,
    /// The test split's metrics, when the run finished.
    pub test: BTreeMap<String, f64>,
    /// The hyperparameters that differ between the listed runs.
    pub differs: BTreeMap<String, String>,
}

/// The runs in `dir` (its subdirectories holding `metrics.jsonl`, or `dir` itself), newest name
/// order, with the hyperparameters that differ between them.
pub fn list(dir: &Path) -> Result<Vec<RunRow>> {
    let mut dirs: Vec<PathBuf> = if dir.join("metrics.jsonl").is_file() {
        vec![dir.to_path_buf()]
    } else {
        std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("metrics.jsonl").is_file() && p.join("config.toml").is_file())
            .collect()
    };
    dirs.sort();
    let mut rows = Vec::new();
    let mut params = Vec::new();
    for run in &dirs {
        let config: toml::Table = std::fs::read_to_string(run.join("config.toml"))
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .with_context(|| format!("{}: unreadable config.toml", run.display()))?;
        rows.push(row(run, &config)?);
        params.push(params_of(&config));
    }
    let keys: BTreeSet<&String> = params.iter().flat_map(|p| p.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            !k.starts_with("run.name")
                && !k.starts_with("run.output_dir")
                && !k.starts_with("run.overwrite")
        })
        .filter(|k| params.iter().any(|p| p.get(*k) != params[0].get(*k)))
        .collect();
    for (row, p) in rows.iter_mut().zip(&params) {
        row.differs = differing
            .iter()
            .map(|k| {
                (
                    (*k).clone(),
                    p.get(*k).map_or_else(|| "-".into(), Param::to_string),
                )
            })
            .collect();
    }
    Ok(rows)
}

fn row(run: &Path, config: &toml::Table) -> Result<RunRow> {
    let get = |section: &str, key: &str| config.get(section).and_then(|s| s.get(key)).cloned();
    let best_metric = get("checkpoint", "best_metric")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "loss".into());
    let lower_is_better =
        match get("checkpoint", "best_mode").and_then(|v| v.as_str().map(str::to_string)) {
            Some(mode) => mode == "min",
            None => best_metric == "loss",
        };
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))
        .with_context(|| format!("cannot read {}/metrics.jsonl", run.display()))?;
    let (mut step, mut train_secs, mut best_valid, mut test) =
        (0, 0.0, None::<(f64, u64)>, BTreeMap::new());
    for r in text.lines().filter_map(Record::parse) {
        step = step.max(r.step());
        match r.fields.get("split").and_then(Value::as_str) {
            Some("train") => {
                train_secs += r
                    .fields
                    .get("window_secs")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            }
            Some("valid") => {
                if let Some(v) = r.fields.get(&best_metric).and_then(Value::as_f64) {
                    let better =
                        best_valid.is_none_or(|(b, _)| if lower_is_better { v < b } else { v > b });
                    if better {
                        best_valid = Some((v, r.step()));
                    }
                }
            }
            Some("test") => {
                test = r
                    .fields
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "step" | "time" | "epoch" | "samples"))
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect();
            }
            _ => {}
        }
    }
    let name = get("run", "name")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            run.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
    Ok(RunRow {
        name,
        dir: run.to_path_buf(),
        status: if test.is_empty() {
            "stopped"
        } else {
            "finished"
        },
        step,
        max_steps: get("train", "max_steps")
            .and_then(|v| v.as_integer())
            .map(|s| s as u64),
        train_secs,
        best_metric,
        best_valid,
        test,
        differs: BTreeMap::new(),
    })
}

/// The table as text, one line per run, columns aligned.
pub fn table(rows: &[RunRow]) -> String {
    let differing: Vec<&String> = rows
        .first()
        .map(|r| r.differs.keys().collect())
        .unwrap_or_default();
    let mut header = vec![
        "run".to_string(),
        "status".into(),
        "steps".into(),
        "train s".into(),
    ];
    let best = rows
        .first()
        .map_or("loss".to_string(), |r| r.best_metric.clone());
    header.push(format!("best valid {best}"));
    let test_keys: BTreeSet<&String> = rows.iter().flat_map(|r| r.test.keys()).collect();
    header.extend(test_keys.iter().map(|k| format!("test {k}")));
    header.extend(differing.iter().map(|k| k.to_string()));
    let mut lines = vec![header];
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            r.status.to_string(),
            match r.max_steps {
                Some(m) => format!("{}/{m}", r.step),
                None => r.step.to_string(),
            },
            format!("{:.2}", r.train_secs),
            r.best_valid
                .map_or("-".into(), |(v, s)| format!("{v:.4} @{s}")),
        ];
        cells.extend(
            test_keys
                .iter()
                .map(|k| r.test.get(*k).map_or("-".into(), |v| format!("{v:.4}"))),
        );
        cells.extend(
            differing
                .iter()
                .map(|k| r.differs.get(*k).cloned().unwrap_or_default()),
        );
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|l| {
            l.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
