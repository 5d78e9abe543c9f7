//! Reading checkpoints back: every file verified against `state.json` before anything loads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::fsutil::sha256_hex;
use crate::tensors::{decode, HostTensor};
use crate::{parse_step_dir, step_dir_name, FORMAT};

/// A checkpoint whose files all match `state.json`.
#[derive(Debug)]
pub struct Verified {
    pub step: usize,
    pub dir: PathBuf,
    /// The whole `state.json`.
    pub state: Value,
    /// The tensors of each tensor file, by file name.
    pub files: BTreeMap<String, Vec<HostTensor>>,
}

/// A checkpoint that `find_resumable` passed over, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub step: usize,
    pub reason: String,
}

/// Steps of the complete-looking checkpoint directories of a run, oldest first.
pub fn list_steps(run: &Path) -> Result<Vec<usize>> {
    let entries = fs::read_dir(run)
        .with_context(|| format!("cannot list run directory {}", run.display()))?;
    let mut steps: Vec<usize> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| parse_step_dir(&e.file_name().to_string_lossy()))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// The step a pointer file (`latest`, `best`) names, if it exists and is well-formed.
pub fn read_pointer(run: &Path, name: &str) -> Option<usize> {
    let text = fs::read_to_string(run.join(name)).ok()?;
    parse_step_dir(text.trim())
}

/// Reads the checkpoint in `dir` and checks every tensor file's size and sha256 against its
/// `state.json`, and the config hash against `config_hash` when given.
pub fn verify(dir: &Path, config_hash: Option<&str>) -> Result<Verified> {
    let state_path = dir.join("state.json");
    if !dir.is_dir() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    let text = match fs::read(&state_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} is missing", state_path.display())
        }
        Err(e) => bail!("cannot read {}: {e}", state_path.display()),
    };
    let state: Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", state_path.display()))?;
    if state["format"] != FORMAT {
        bail!(
            "{}: format {} is not {FORMAT}; this checkpoint was not written by this version of Kiln",
            state_path.display(),
            state["format"]
        );
    }
    let step = state["step"]
        .as_u64()
        .with_context(|| format!("{}: no step", state_path.display()))? as usize;
    if let Some(expected) = config_hash {
        let recorded = state["config_hash"].as_str().unwrap_or("(none)");
        if recorded != expected {
            bail!(
                "{}: config hash {} differs from the run's config ({}): the config changed after this checkpoint was written; restore the config, or pass --force to resume with the new one",
                state_path.display(),
                short(recorded),
                short(expected)
            );
        }
    }
    let recorded = state["files"]
        .as_object()
        .with_context(|| format!("{}: no files table", state_path.display()))?;
    let mut files = BTreeMap::new();
    for (name, info) in recorded {
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{} is missing", path.display())
            }
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        let want_len = info["bytes"].as_u64().unwrap_or(0) as usize;
        if bytes.len() < want_len {
            bail!(
                "{} is truncated: {} of {want_len} bytes",
                path.display(),
                bytes.len()
            );
        }
        if bytes.len() > want_len {
            bail!(
                "{} is longer than recorded: {} bytes, state.json says {want_len}",
                path.display(),
                bytes.len()
            );
        }
        let want = info["sha256"].as_str().unwrap_or("");
        let got = sha256_hex(&bytes);
        if got != want {
            bail!(
                "{} is corrupted: its sha256 is {}, state.json records {}",
                path.display(),
                short(&got),
                short(want)
            );
        }
        files.insert(name.clone(), decode(&bytes, &path.display().to_string())?);
    }
    Ok(Verified {
        step,
        dir: dir.to_path_buf(),
        state,
        files,
    })
}

/// The newest checkpoint of `run` that verifies and passes `check` (e.g. tensor shapes against
/// the model), with the newer ones skipped on the way and why.
pub fn find_resumable(
    run: &Path,
    config_hash: Option<&str>,
    check: impl Fn(&Verified) -> Result<()>,
) -> Result<(Verified, Vec<Skipped>)> {
    let steps = list_steps(run)?;
    if steps.is_empty() {
        bail!(
            "{} holds no checkpoint (no step-<N> directory) to resume from",
            run.display()
        );
    }
    let mut skipped = Vec::new();
    for &step in steps.iter().rev() {
        let dir = run.join(step_dir_name(step));
        match verify(&dir, config_hash).and_then(|v| check(&v).map(|_| v)) {
            Ok(v) => return Ok((v, skipped)),
            Err(e) => skipped.push(Skipped {
                step,
                reason: format!("{e:#}"),
            }),
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|s| format!("step-{}: {}", s.step, s.reason))
        .collect();
    bail!(
        "no checkpoint in {} verifies: {}",
        run.display(),
        reasons.join("; ")
    )
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{write_checkpoint, Pending};
    use serde_json::{json, Map};

    fn pending(step: usize) -> Pending {
        let mut state = Map::new();
        state.insert("answer".into(), json!(42));
        Pending {
            step,
            files: vec![(
                "model.safetensors".into(),
                vec![HostTensor::f32("w", vec![4], &[step as f32, 1.0, 2.0, 3.0])],
            )],
            state,
            config_hash: "abc".into(),
            best: step == 2,
            keep_last: Some(2),
        }
    }

    #[test]
    fn written_checkpoints_verify_and_prune_keeps_best() {
        let run = tempfile::tempdir().unwrap();
        for step in 1..=5 {
            write_checkpoint(run.path(), pending(step)).unwrap();
        }
        assert_eq!(list_steps(run.path()).unwrap(), vec![2, 4, 5]);
        assert_eq!(read_pointer(run.path(), "latest"), Some(5));
        assert_eq!(read_pointer(run.path(), "best"), Some(2));
        let v = verify(&run.path().join("step-5"), Some("abc")).unwrap();
        assert_eq!(v.state["answer"], 42);
        assert_eq!(
            v.files["model.safetensors"][0].data[..4],
            5f32.to_le_bytes()
        );
    }

    #[test]
    fn damage_is_named_and_skipped() {
        let run = tempfile::tempdir().unwrap();
        for step in 1..=3 {
            let mut p = pending(step);
            p.keep_last = None;
            write_checkpoint(run.path(), p).unwrap();
        }
        let f3 = run.path().join("step-3/model.safetensors");
        let mut bytes = fs::read(&f3).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&f3, &bytes).unwrap();
        let f2 = run.path().join("step-2/model.safetensors");
        fs::write(&f2, &bytes[..10]).unwrap();

        let e = verify(&run.path().join("step-3"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step-3/model.safetensors is corrupted"), "{e}");
        let e = verify(&run.path().join("step-2"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is truncated: 10 of"), "{e}");
        let e = verify(&run.path().join("step-1"), Some("xyz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config hash abc differs"), "{e}");

        let (v, skipped) = find_resumable(run.path(), Some("abc"), |_| Ok(())).unwrap();
        assert_eq!(v.step, 1);
        assert_eq!(
            skipped.iter().map(|s| s.step).collect::<Vec<_>>(),
            vec![3, 2]
        );

        fs::remove_file(run.path().join("step-1/model.safetensors")).unwrap();
        let e = find_resumable(run.path(), Some("abc"), |_| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains("model.safetensors is missing"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_write_leaves_no_partial_directory() {
        let run = tempfile::tempdir().unwrap();
        write_checkpoint(run.path(), pending(1)).unwrap();
        let mut p = pending(2);
        p.files[0].1[0].shape = vec![5]; // 4 values cannot have shape [5]
        let e = write_checkpoint(run.path(), p).unwrap_err();
        assert!(format!("{e:#}").contains("earlier checkpoints"), "{e:#}");
        assert!(!run.path().join("step-2.tmp").exists());
        assert!(!run.path().join("step-2").exists());
        assert_eq!(read_pointer(run.path(), "latest"), Some(1));
        verify(&run.path().join("step-1"), Some("abc")).unwrap();
    }
}
