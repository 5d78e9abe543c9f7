//! Sweeps (`kiln sweep SWEEP.toml`): trials of a base config with some keys varied, each an
//! ordinary run in the sweep's directory, ranked by a metric at the end.
//!
//! ```toml
//! base = "../configs/smoke.toml"      # relative to the sweep file
//! method = "grid"                     # or "random" (with n_trials)
//! seed = 0                            # the random method's draws
//! repeats = 1                         # runs per point, with run.seed, run.seed + 1, ...
//! metric = "valid/loss"               # <split>/<field>: its last value ranks the trials
//! goal = "minimize"                   # or "maximize"
//! [parameters]
//! "optimizer.lr" = { min = 1e-4, max = 1e-2, log = true, n = 3 }   # n points for a grid
//! "model.hidden" = [[32], [64]]
//! ```
//!
//! The sweep's state is `<output_dir>/<name>/sweep.json`, written after each trial: run again, a
//! sweep skips finished (and failed) trials, resumes interrupted ones from their checkpoint and
//! starts the rest, so that an interrupted sweep ends with the table an uninterrupted one has.

mod run;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use run::{run, RunOptions, SweepOutcome};
pub use state::{SweepState, TrialRecord, TrialStatus};

/// A sweep file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The base config, relative to the sweep file.
    pub base: PathBuf,
    /// The sweep's name (default: the sweep file's stem); its trials go in
    /// `<output_dir>/<name>/`.
    pub name: Option<String>,
    /// Where sweeps go (default `checkpoints/sweeps`), relative to where `kiln` runs.
    pub output_dir: Option<PathBuf>,
    /// `grid` (default) or `random`.
    #[serde(default)]
    pub method: Method,
    /// Seeds the random method's draws (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Trials to draw (random; required) or the first trials of the grid to run.
    pub n_trials: Option<usize>,
    /// Runs per point of the parameters, with `run.seed` + 0, 1, ... (default 1).
    #[serde(default = "one")]
    pub repeats: usize,
    /// The metric that ranks trials, `<split>/<field>` (`valid/loss`, `test/accuracy`).
    pub metric: String,
    /// `minimize` (default) or `maximize`.
    #[serde(default)]
    pub goal: Goal,
    /// The keys varied, by dotted config key.
    pub parameters: BTreeMap<String, ParamSpec>,
}

fn one() -> usize {
    1
}

/// How points are chosen.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every combination of the parameters' values.
    #[default]
    Grid,
    /// `n_trials` draws.
    Random,
}

/// Which end of the metric is better.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Lower is better (losses).
    #[default]
    Minimize,
    /// Higher is better (accuracies).
    Maximize,
}

/// A parameter's values: a list, or a range.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ParamSpec {
    /// These values (any TOML values: numbers, strings, lists).
    Values(Vec<toml::Value>),
    /// Numbers from `min` to `max`.
    Range(RangeSpec),
}

/// `{ min, max, log = false, n }`: integers when `min` and `max` are.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// The smallest value.
    pub min: toml::Value,
    /// The largest value.
    pub max: toml::Value,
    /// Spaced (or drawn) evenly in log scale.
    #[serde(default)]
    pub log: bool,
    /// Points of a grid (required for `method = "grid"`).
    pub n: Option<usize>,
}

impl SweepSpec {
    /// Reads and checks a sweep file.
    pub fn load(path: &Path) -> Result<SweepSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let spec: SweepSpec = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
        let at = |what: String| format!("{}: {what}", path.display());
        ensure!(
            !spec.parameters.is_empty(),
            at("[parameters] names no key to vary".into())
        );
        ensure!(spec.repeats >= 1, at("repeats must be at least 1".into()));
        ensure!(
            spec.metric
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()),
            at(format!(
                "metric {:?}: write it as <split>/<field>, e.g. valid/loss",
                spec.metric
            ))
        );
        if spec.method == Method::Random {
            ensure!(
                spec.n_trials.is_some_and(|n| n > 0),
                at("method = \"random\" needs n_trials (at least 1)".into())
            );
        }
        for (key, p) in &spec.parameters {
            match p {
                ParamSpec::Values(v) => ensure!(
                    !v.is_empty(),
                    at(format!("parameters.{key}: give at least one value"))
                ),
                ParamSpec::Range(r) => {
                    let (lo, hi) = (number(&r.min), number(&r.max));
                    ensure!(
                        lo.is_some() && hi.is_some(),
                        at(format!("parameters.{key}: min and max must be numbers"))
                    );
                    let (lo, hi) = (lo.unwrap(), hi.unwrap());
                    ensure!(
                        lo <= hi,
                        at(format!("parameters.{key}: min must not exceed max"))
                    );
                    ensure!(
                        !r.log || lo > 0.0,
                        at(format!("parameters.{key}: a log range needs min > 0"))
                    );
                    if spec.method == Method::Grid {
                        ensure!(
                            r.n.is_some_and(|n| n >= 1),
                            at(format!(
                                "parameters.{key}: a range in a grid needs n, the number of points"
                            ))
                        );
                    }
                }
            }
        }
        Ok(spec)
    }

    /// The trials, in order; the same spec always gives the same trials.
    pub fn trials(&self, base_seed: u64) -> Vec<Trial> {
        let points: Vec<Vec<(String, toml::Value)>> = match self.method {
            Method::Grid => {
                let mut points = vec![Vec::new()];
                for (key, p) in &self.parameters {
                    let values = match p {
                        ParamSpec::Values(v) => v.clone(),
                        ParamSpec::Range(r) => grid(r),
                    };
                    points = points
                        .into_iter()
                        .flat_map(|pt| {
                            values
                                .iter()
                                .map(move |v| [pt.clone(), vec![(key.clone(), v.clone())]].concat())
                        })
                        .collect();
                }
                points.truncate(self.n_trials.unwrap_or(usize::MAX));
                points
            }
            Method::Random => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
                (0..self.n_trials.unwrap_or(0))
                    .map(|_| {
                        self.parameters
                            .iter()
                            .map(|(key, p)| {
                                let v = match p {
                                    ParamSpec::Values(v) => v[rng.random_range(0..v.len())].clone(),
                                    ParamSpec::Range(r) => draw(r, &mut rng),
                                };
                                (key.clone(), v)
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        let mut trials = Vec::new();
        for point in points {
            let group: Vec<String> = point
                .iter()
                .map(|(key, v)| format!("{}={}", key.rsplit('.').next().unwrap_or(key), short(v)))
                .collect();
            let group = group.join("-");
            for r in 0..self.repeats {
                let seed = (self.repeats > 1).then(|| base_seed + r as u64);
                let mut name = format!("t{:03}-{group}", trials.len());
                if let Some(s) = seed {
                    name.push_str(&format!("-seed={s}"));
                }
                trials.push(Trial {
                    name: dir_name(&name),
                    group: dir_name(&group),
                    params: point.clone(),
                    seed,
                });
            }
        }
        trials
    }
}

fn number(v: &toml::Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

/// A point of a range as the run's config gets it: an integer when the range's ends are, else
/// the number to 6 significant digits (`1e-3`, not `0.0010000000000000002` from `exp(ln)`).
fn value(r: &RangeSpec, x: f64) -> toml::Value {
    if r.min.is_integer() && r.max.is_integer() {
        toml::Value::Integer(x.round() as i64)
    } else {
        toml::Value::Float(format!("{x:.5e}").parse().unwrap_or(x))
    }
}

fn grid(r: &RangeSpec) -> Vec<toml::Value> {
    let (lo, hi) = (number(&r.min).unwrap_or(0.0), number(&r.max).unwrap_or(0.0));
    let n = r.n.unwrap_or(1);
    (0..n)
        .map(|i| {
            let t = if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            };
            let x = if r.log {
                (lo.ln() + t * (hi.ln() - lo.ln())).exp()
            } else {
                lo + t * (hi - lo)
            };
            value(r, x)
        })
        .collect()
}

fn draw(r: &RangeSpec, rng: &mut impl Rng) -> toml::Value {
    let (lo, hi) = (number(&r.min).unwrap_or(0.0), number(&r.max).unwrap_or(0.0));
    let t: f64 = rng.random();
    let x = if r.log {
        (lo.ln() + t * (hi.ln() - lo.ln())).exp()
    } else {
        lo + t * (hi - lo)
    };
    value(r, x)
}

/// A value as a trial's name shows it: very large and very small numbers in exponent form
/// (`lr=1e30`, `lr=1e-5`, not thirty digits), the rest as TOML writes them.
fn short(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(x) if *x != 0.0 && (x.abs() >= 1e5 || x.abs() < 1e-3) => {
            format!("{x:e}")
        }
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(short).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// A trial's directory name: its parameters, in characters any file system takes.
fn dir_name(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !matches!(c, '[' | ']' | '"' | ' '))
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '=' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean.chars().take(120).collect()
}

/// One trial: a run of the base config with these keys set.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// Its run name and directory name (`t001-lr=0.001-hidden=64`).
    pub name: String,
    /// The point it runs (its name without the seed): a sweep's repeats share it.
    pub group: String,
    /// The keys it sets.
    pub params: Vec<(String, toml::Value)>,
    /// `run.seed`, when the sweep repeats points.
    pub seed: Option<u64>,
}

impl Trial {
    /// Its `--set` overrides.
    pub fn overrides(&self) -> Vec<String> {
        let mut o: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(s) = self.seed {
            o.push(format!("run.seed={s}"));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SweepSpec> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        SweepSpec::load(&path)
    }

    #[test]
    fn a_grid_is_every_combination_named_by_its_parameters() {
        let s = spec("base = \"b.toml\"\nmetric = \"valid/loss\"\n[parameters]\n\"optimizer.lr\" = { min = 1e-3, max = 1e-1, log = true, n = 3 }\n\"model.hidden\" = [[32], [64]]\n").unwrap();
        let t = s.trials(7);
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].name, "t000-hidden=32-lr=0.001");
        assert_eq!(t[1].overrides(), ["model.hidden=[32]", "optimizer.lr=0.01"]);
        let lr = |t: &Trial| t.params[1].1.as_float().unwrap();
        assert!((lr(&t[2]) - 0.1).abs() < 1e-12 && (lr(&t[1]) - 0.01).abs() < 1e-12);
        assert_eq!(s.trials(7), t, "the same spec plans the same trials");
        let s = spec("base = \"b.toml\"\nmetric = \"valid/loss\"\n[parameters]\n\"optimizer.lr\" = [1e30, 3e-5, 0.25]\n").unwrap();
        let names: Vec<String> = s.trials(7).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["t000-lr=1e30", "t001-lr=3e-5", "t002-lr=0.25"]);
    }

    #[test]
    fn random_draws_are_seeded_and_repeats_vary_the_seed() {
        let text = "base = \"b.toml\"\nmethod = \"random\"\nn_trials = 3\nseed = 5\nrepeats = 2\nmetric = \"valid/accuracy\"\ngoal = \"maximize\"\n[parameters]\n\"optimizer.lr\" = { min = 1e-4, max = 1e-1, log = true }\n\"train.max_steps\" = { min = 10, max = 20 }\n";
        let t = spec(text).unwrap().trials(42);
        assert_eq!(t.len(), 6);
        assert_eq!((t[0].seed, t[1].seed), (Some(42), Some(43)));
        assert_eq!(t[0].params, t[1].params);
        assert_eq!(t[0].group, t[1].group);
        for trial in &t {
            let lr = trial.params[0].1.as_float().unwrap();
            let steps = trial.params[1].1.as_integer().unwrap();
            assert!(
                (1e-4..=1e-1).contains(&lr) && (10..=20).contains(&steps),
                "{trial:?}"
            );
        }
        assert_eq!(spec(text).unwrap().trials(42), t);
        assert_ne!(t[0].params, t[2].params);
    }

    #[test]
    fn every_shipped_sweep_plans_trials_of_a_shipped_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sweeps");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let spec = SweepSpec::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(
                path.parent().unwrap().join(&spec.base).is_file(),
                "{}",
                path.display()
            );
            assert!(!spec.trials(42).is_empty());
            seen += 1;
        }
        assert!(seen >= 1);
    }

    #[test]
    fn bad_sweep_files_name_what_to_fix() {
        let cases = [
            ("base = \"b\"\nmetric = \"loss\"\n[parameters]\n\"a.b\" = [1]\n", "write it as <split>/<field>"),
            ("base = \"b\"\nmetric = \"valid/loss\"\n[parameters]\n", "names no key to vary"),
            ("base = \"b\"\nmetric = \"valid/loss\"\n[parameters]\n\"a.b\" = { min = 1, max = 2 }\n", "needs n, the number of points"),
            ("base = \"b\"\nmethod = \"random\"\nmetric = \"valid/loss\"\n[parameters]\n\"a.b\" = [1]\n", "needs n_trials"),
            ("base = \"b\"\nmetric = \"valid/loss\"\n[parameters]\n\"a.b\" = { min = 0, max = 1, log = true, n = 2 }\n", "needs min > 0"),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", spec(text).unwrap_err());
            assert!(e.contains(needle), "{e}");
        }
    }
}
