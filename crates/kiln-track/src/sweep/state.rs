//! A sweep's state, `sweep.json`: each trial's status and value, and the ranking.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Goal;

/// How a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Not started.
    Pending,
    /// Stopped by a signal, with a checkpoint: it resumes.
    Interrupted,
    /// Trained to its last step, with its metric.
    Finished,
    /// Its run failed, or its metric is missing or not a number: ranked last.
    Failed,
}

/// A trial's record in `sweep.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Its run name.
    pub name: String,
    /// The keys it sets, as TOML.
    pub params: BTreeMap<String, String>,
    /// `run.seed`, when repeated.
    pub seed: Option<u64>,
    /// Where it stands.
    pub status: TrialStatus,
    /// The last value of the sweep's metric.
    pub value: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl TrialRecord {
    /// A trial not yet run.
    pub fn pending(t: &super::Trial) -> TrialRecord {
        TrialRecord {
            name: t.name.clone(),
            params: t
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            seed: t.seed,
            status: TrialStatus::Pending,
            value: None,
            error: None,
        }
    }
}

/// `sweep.json`: the sweep's state and, at the end, its ranking.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepState {
    /// The sweep's name.
    pub name: String,
    /// The metric ranked by.
    pub metric: String,
    /// Its goal.
    pub goal: Goal,
    /// The trials in the order run.
    pub trials: Vec<TrialRecord>,
    /// The MLflow run whose children the trials are, when the base config reports to MLflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_parent_run_id: Option<String>,
}

impl SweepState {
    /// Writes `dir/sweep.json` (whole, then renamed into place).
    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        let (path, tmp) = (dir.join("sweep.json"), dir.join("sweep.json.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The trials best first: finished ones by value, then failed and unfinished ones.
    pub fn ranked(&self) -> Vec<&TrialRecord> {
        let mut rows: Vec<&TrialRecord> = self.trials.iter().collect();
        let key = |t: &TrialRecord| match (t.status, t.value) {
            (TrialStatus::Finished, Some(v)) if v.is_finite() => {
                Some(if self.goal == Goal::Minimize { v } else { -v })
            }
            _ => None,
        };
        rows.sort_by(|a, b| match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        rows
    }

    /// The ranked table, one line per trial.
    pub fn table(&self) -> String {
        let keys: Vec<&String> = self
            .trials
            .first()
            .map(|t| t.params.keys().collect())
            .unwrap_or_default();
        let mut lines = vec![[
            vec![
                "rank".to_string(),
                "trial".into(),
                self.metric.clone(),
                "status".into(),
            ],
            keys.iter().map(|k| k.to_string()).collect(),
        ]
        .concat()];
        for (i, t) in self.ranked().into_iter().enumerate() {
            let value = t.value.map_or("-".into(), |v| format!("{v:.6}"));
            let status = match t.status {
                TrialStatus::Failed => format!("failed: {}", t.error.as_deref().unwrap_or("")),
                s => format!("{s:?}").to_lowercase(),
            };
            let mut cells = vec![(i + 1).to_string(), t.name.clone(), value, status];
            cells.extend(
                keys.iter()
                    .map(|k| t.params.get(*k).cloned().unwrap_or_default()),
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
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_and_nan_trials_rank_last() {
        let rec = |name: &str, status, value| TrialRecord {
            name: name.into(),
            params: BTreeMap::new(),
            seed: None,
            status,
            value,
            error: None,
        };
        let state = SweepState {
            name: "s".into(),
            metric: "valid/loss".into(),
            goal: Goal::Minimize,
            trials: vec![
                rec("nan", TrialStatus::Failed, Some(f64::NAN)),
                rec("b", TrialStatus::Finished, Some(0.5)),
                rec("failed", TrialStatus::Failed, None),
                rec("a", TrialStatus::Finished, Some(0.25)),
            ],
            mlflow_parent_run_id: None,
        };
        let order: Vec<&str> = state.ranked().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(&order[..2], ["a", "b"]);
        assert!(
            state.table().lines().nth(1).unwrap().starts_with("1     a"),
            "{}",
            state.table()
        );
    }
}
