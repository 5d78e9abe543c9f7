//! Reading checkpoints back: every file verified against `state.json` before anything loads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::error::{CheckpointError, Skipped};
use crate::fsutil::sha256_hex;
use crate::layout::{parse_step_dir, step_dir_name, STATE_FILE};
use crate::tensors::{decode, HostTensor};
use crate::FORMAT;

/// A checkpoint whose files all match `state.json`.
#[derive(Debug)]
pub struct Verified {
    /// The step the checkpoint was written after.
    pub step: usize,
    /// Its directory.
    pub dir: PathBuf,
    /// The whole `state.json`.
    pub state: Value,
    /// The tensors of each tensor file, by file name.
    pub files: BTreeMap<String, Vec<HostTensor>>,
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
pub fn verify(dir: &Path, config_hash: Option<&str>) -> Result<Verified, CheckpointError> {
    let state_path = dir.join(STATE_FILE);
    if !dir.is_dir() {
        return Err(CheckpointError::Missing {
            path: dir.to_path_buf(),
        });
    }
    let damaged = |reason: String| CheckpointError::Damaged {
        path: state_path.clone(),
        reason,
    };
    let text = read(&state_path)?;
    let state: Value =
        serde_json::from_slice(&text).map_err(|e| damaged(format!(" is damaged: {e}")))?;
    if state["format"] != FORMAT {
        return Err(damaged(format!(
            ": format {} is not {FORMAT}; this checkpoint was not written by this version of Kiln",
            state["format"]
        )));
    }
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| damaged(": no step".into()))? as usize;
    if let Some(expected) = config_hash {
        let recorded = state["config_hash"].as_str().unwrap_or("(none)");
        if recorded != expected {
            return Err(CheckpointError::ConfigMismatch {
                path: state_path,
                recorded: recorded.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    let recorded = state["files"]
        .as_object()
        .ok_or_else(|| damaged(": no files table".into()))?;
    let mut files = BTreeMap::new();
    for (name, info) in recorded {
        let path = dir.join(name);
        let bytes = read(&path)?;
        let want_len = info["bytes"].as_u64().unwrap_or(0) as usize;
        if bytes.len() < want_len {
            return Err(CheckpointError::Truncated {
                path,
                bytes: bytes.len(),
                recorded: want_len,
            });
        }
        if bytes.len() > want_len {
            return Err(CheckpointError::TooLong {
                path,
                bytes: bytes.len(),
                recorded: want_len,
            });
        }
        let want = info["sha256"].as_str().unwrap_or("");
        let got = sha256_hex(&bytes);
        if got != want {
            return Err(CheckpointError::HashMismatch {
                path,
                sha256: got,
                recorded: want.to_string(),
            });
        }
        let tensors =
            decode(&bytes, &path.display().to_string()).map_err(|e| CheckpointError::Damaged {
                path: path.clone(),
                reason: format!(": {e:#}"),
            })?;
        files.insert(name.clone(), tensors);
    }
    Ok(Verified {
        step,
        dir: dir.to_path_buf(),
        state,
        files,
    })
}

/// The bytes of `path`; a missing file is [`CheckpointError::Missing`].
fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::Missing {
            path: path.to_path_buf(),
        },
        _ => CheckpointError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// The newest checkpoint of `run` that verifies and passes `check` (e.g. tensor shapes against
/// the model), with the newer ones skipped on the way and why.
pub fn find_resumable(
    run: &Path,
    config_hash: Option<&str>,
    check: impl Fn(&Verified) -> Result<(), CheckpointError>,
) -> Result<(Verified, Vec<Skipped>), CheckpointError> {
    let steps = list_steps(run).map_err(|e| CheckpointError::Unreadable {
        path: run.to_path_buf(),
        reason: format!("{e:#}"),
    })?;
    if steps.is_empty() {
        return Err(CheckpointError::NoCheckpoint {
            run: run.to_path_buf(),
        });
    }
    let mut skipped = Vec::new();
    for &step in steps.iter().rev() {
        let dir = run.join(step_dir_name(step));
        match verify(&dir, config_hash).and_then(|v| check(&v).map(|_| v)) {
            Ok(v) => return Ok((v, skipped)),
            Err(error) => skipped.push(Skipped { step, error }),
        }
    }
    Err(CheckpointError::NoneVerifies {
        run: run.to_path_buf(),
        skipped,
    })
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
        // Each case is its own variant, so that a caller can tell them apart.
        let CheckpointError::NoneVerifies { skipped, .. } = e else {
            panic!("{e:?}")
        };
        let kinds: Vec<_> = skipped.iter().map(|s| (s.step, &s.error)).collect();
        assert!(
            matches!(
                kinds.as_slice(),
                [
                    (3, CheckpointError::HashMismatch { .. }),
                    (2, CheckpointError::Truncated { bytes: 10, .. }),
                    (1, CheckpointError::Missing { .. })
                ]
            ),
            "{kinds:?}"
        );
        assert!(matches!(
            verify(&run.path().join("step-3"), Some("xyz")),
            Err(CheckpointError::ConfigMismatch { .. })
        ));
        assert!(matches!(
            verify(&run.path().join("step-9"), None),
            Err(CheckpointError::Missing { .. })
        ));
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
