//! Continuing a run: where from ([`ResumeFrom`]), and which `--set` overrides a resumed run
//! accepts ([`resume_config`]): keys that do not change what the run computes
//! ([`RESUMABLE_KEYS`]) freely, others only when forced, and never where the run is written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_core::config::RESUMABLE_KEYS;
use kiln_core::layout::CONFIG_FILE;
use kiln_core::Config;

use crate::checkpoint::is_checkpoint_dir;

/// Where a resumed run continues from.
#[derive(Clone, Debug)]
pub enum ResumeFrom {
    /// The newest checkpoint of a run directory that verifies.
    Latest(PathBuf),
    /// One checkpoint directory (`<run>/step-<N>`).
    Checkpoint(PathBuf),
}

impl ResumeFrom {
    /// What `path` names: a checkpoint directory, or else a run directory (its newest
    /// checkpoint that verifies).
    pub fn of(path: &Path) -> ResumeFrom {
        if is_checkpoint_dir(path) {
            ResumeFrom::Checkpoint(path.to_path_buf())
        } else {
            ResumeFrom::Latest(path.to_path_buf())
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        match self {
            ResumeFrom::Latest(run) => run,
            ResumeFrom::Checkpoint(dir) => dir.parent().unwrap_or(Path::new(".")),
        }
    }
}

/// The config of the run to resume from `path` (a run directory or one of its step
/// directories) with `overrides` applied, checked by [`check_resume_changes`].
pub fn resume_config(
    path: &Path,
    overrides: &[String],
    force: bool,
) -> Result<(Config, ResumeFrom)> {
    if !path.exists() {
        bail!(
            "--resume {}: does not exist; give a run directory or one of its step-<N> directories",
            path.display()
        );
    }
    let from = ResumeFrom::of(path);
    let config_path = from.run_dir().join(CONFIG_FILE);
    if !config_path.is_file() {
        bail!(
            "--resume {}: {} is not a Kiln run directory (it has no {CONFIG_FILE})",
            path.display(),
            from.run_dir().display()
        );
    }
    let saved = Config::load(&config_path, &[]).with_context(|| {
        format!(
            "reading the config of the run to resume ({})",
            path.display()
        )
    })?;
    let config = Config::load_for_resume(&config_path, overrides)?;
    check_resume_changes(&saved.changed_keys(&config), from.run_dir(), force)?;
    Ok((config, from))
}

/// Checks the keys that overrides change on resuming the run in `run_dir`: where the run is
/// written never changes; keys outside [`RESUMABLE_KEYS`] change what the run computes, so
/// they are refused unless `force` (then a warning says the run will not match an
/// uninterrupted one).
pub fn check_resume_changes(changed: &[String], run_dir: &Path, force: bool) -> Result<()> {
    if let Some(key) = changed
        .iter()
        .find(|k| matches!(k.as_str(), "run.name" | "run.output_dir" | "run.overwrite"))
    {
        bail!(
            "--set {key}: a resumed run continues in {}; {key} cannot change",
            run_dir.display()
        );
    }
    let maths: Vec<&str> = changed
        .iter()
        .map(String::as_str)
        .filter(|k| !kiln_core::config::is_resumable_key(k))
        .collect();
    if maths.is_empty() {
        return Ok(());
    }
    let keys = maths.join(", ");
    if !force {
        bail!(
            "--set {keys}: changes what the run computes, so the resumed run would not continue the same run; without --force only these keys may change: {} and any tracking.* key",
            RESUMABLE_KEYS.join(", ")
        );
    }
    tracing::warn!(
        "--force: resuming with changed {keys}; the run will not match an uninterrupted one"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cadence_keys_change_freely_maths_keys_only_when_forced_and_the_place_never() {
        let run = Path::new("runs/a");
        check_resume_changes(&keys(&["train.max_steps", "train.log_every"]), run, false).unwrap();
        check_resume_changes(&[], run, false).unwrap();

        let e = check_resume_changes(&keys(&["optimizer.lr", "train.max_steps"]), run, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--set optimizer.lr: changes what the run computes"),
            "{e}"
        );
        assert!(
            e.contains("train.max_steps"),
            "the allowed keys are listed: {e}"
        );
        check_resume_changes(&keys(&["optimizer.lr"]), run, true).unwrap();

        for key in ["run.name", "run.output_dir", "run.overwrite"] {
            let e = check_resume_changes(&keys(&[key]), run, true).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{key} cannot change")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_resume_path_names_a_run_or_one_of_its_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("step-40");
        std::fs::create_dir(&step).unwrap();
        assert!(matches!(ResumeFrom::of(dir.path()), ResumeFrom::Latest(_)));
        let from = ResumeFrom::of(&step);
        assert!(matches!(from, ResumeFrom::Checkpoint(_)));
        assert_eq!(from.run_dir(), dir.path());

        let e = resume_config(&dir.path().join("nope"), &[], false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = resume_config(dir.path(), &[], false).unwrap_err();
        assert!(e.to_string().contains("is not a Kiln run directory"), "{e}");
    }
}
