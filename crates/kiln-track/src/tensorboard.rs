//! TensorBoard: event files TensorBoard reads, written by Kiln itself.
//!
//! An event file is a sequence of TFRecords, each `length` (u64, little-endian), the masked
//! CRC-32C of those 8 bytes, the data (a serialized `Event` protobuf, [`proto`]) and the masked
//! CRC-32C of the data. Masking rotates the CRC right by 15 bits and adds `0xa282ead8`. The first
//! record holds the file version (`brain.Event:2`); the others hold scalars, text or the hparams
//! plugin's data. A resumed run starts a new file whose first event after the version is a
//! `SessionLog` `START` at the step after the checkpoint: TensorBoard then drops what the
//! interrupted attempt wrote from that step on (as PyTorch's `SummaryWriter(purge_step=...)`),
//! so the run reads as one.

pub mod proto;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

use crate::record::{now, Record};
use crate::tracker::{Param, RunInfo, RunStatus, Tracker};
use proto::{
    Event, HParamsData, HParamsPluginData, Kind, PluginData, ProtoValue, SessionEndInfo,
    SessionLog, SessionStartInfo, Summary, SummaryMetadata, Tensor, TensorShape, Value, What,
};

/// `CRC-32C`, masked as TFRecord stores it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named as TensorBoard expects
    /// (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`), starting with the file-version record.
    ///
    /// TensorBoard reads a directory's files in the order of their names, and a resumed run's
    /// file must come after the interrupted attempt's: `<seconds>` is now, or one more than the
    /// newest file's when that one is not older (two attempts within a second).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the TensorBoard directory {}", dir.display())
        })?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let newest = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("events.out.tfevents.")?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        let secs = match newest {
            Some(newest) if newest >= now() as u64 => newest + 1,
            _ => now() as u64,
        };
        let stem = format!(
            "events.out.tfevents.{secs:010}.{host}.{}",
            std::process::id()
        );
        let path = (0..)
            .map(|n| dir.join(format!("{stem}.{n}")))
            .find(|p| !p.exists())
            .expect("some file number is free");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a TFRecord.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc32c(&data).to_le_bytes());
        self.file
            .write_all(&record)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Writes buffered events to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Scalars at `step`, one summary value each (stored as float32, as TensorBoard's are).
    pub fn scalars(&mut self, step: u64, time: f64, scalars: &[(String, f64)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let value = scalars
            .iter()
            .map(|(tag, v)| Value {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                ..Value::default()
            })
            .collect();
        self.summary(step, time, value)
    }

    /// Text at `step` (Markdown) for TensorBoard's text dashboard, under `<tag>/text_summary`.
    pub fn text(&mut self, tag: &str, step: u64, time: f64, markdown: &str) -> Result<()> {
        let value = Value {
            tag: format!("{tag}/text_summary"),
            tensor: Some(Tensor {
                dtype: proto::DT_STRING,
                tensor_shape: Some(TensorShape {
                    dim: vec![proto::Dim { size: 1 }],
                }),
                string_val: vec![markdown.as_bytes().to_vec()],
            }),
            metadata: Some(plugin("text", Vec::new())),
            ..Value::default()
        };
        self.summary(step, time, vec![value])
    }

    /// Makes readers drop every point an earlier file wrote at `step` or later.
    pub fn purge_from(&mut self, step: u64, time: f64) -> Result<()> {
        self.write(&Event {
            wall_time: time,
            step: step as i64,
            what: Some(What::SessionLog(SessionLog {
                status: proto::SESSION_START,
            })),
        })
    }

    /// The hparams plugin's data: the start of a session with its hyperparameters, or its end.
    pub fn hparams(&mut self, step: u64, time: f64, data: HParamsData) -> Result<()> {
        let tag = match data {
            HParamsData::SessionStartInfo(_) => "_hparams_/session_start_info",
            HParamsData::SessionEndInfo(_) => "_hparams_/session_end_info",
        };
        let content = HParamsPluginData {
            version: 0,
            data: Some(data),
        }
        .encode_to_vec();
        let value = Value {
            tag: tag.into(),
            metadata: Some(plugin("hparams", content)),
            ..Value::default()
        };
        self.summary(step, time, vec![value])
    }

    fn summary(&mut self, step: u64, time: f64, value: Vec<Value>) -> Result<()> {
        self.write(&Event {
            wall_time: time,
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }
}

fn plugin(name: &str, content: Vec<u8>) -> SummaryMetadata {
    SummaryMetadata {
        plugin_data: Some(PluginData {
            plugin_name: name.into(),
            content,
        }),
    }
}

/// The tracker that writes a run's TensorBoard events: every scalar of every record, the
/// resolved config as text, and the hyperparameters for the HParams dashboard.
pub struct TensorBoard {
    dir: PathBuf,
    writer: Option<EventWriter>,
    last_step: u64,
}

impl TensorBoard {
    /// Writes to `dir` (a run's `tb/` by default).
    pub fn new(dir: PathBuf) -> TensorBoard {
        TensorBoard {
            dir,
            writer: None,
            last_step: 0,
        }
    }

    fn writer(&mut self) -> Result<&mut EventWriter> {
        self.writer
            .as_mut()
            .context("the TensorBoard tracker got a record before the run started")
    }
}

impl Tracker for TensorBoard {
    fn name(&self) -> &'static str {
        "tensorboard"
    }

    fn start(&mut self, run: &RunInfo) -> Result<()> {
        let mut writer = EventWriter::create(&self.dir)?;
        let time = run.start_time;
        let step = run.resumed_from.unwrap_or(0);
        if let Some(step) = run.resumed_from {
            writer.purge_from(step + 1, time)?;
        }
        let config = format!("```toml\n{}```\n", run.config_toml.replace("```", "` ` `"));
        writer.text("config", step, time, &config)?;
        let hparams = run
            .params
            .iter()
            .map(|(k, p)| {
                let kind = match p {
                    Param::Number(n) => Kind::Number(*n),
                    Param::Text(s) => Kind::String(s.clone()),
                    Param::Bool(b) => Kind::Bool(*b),
                };
                (k.clone(), ProtoValue { kind: Some(kind) })
            })
            .collect();
        let start = SessionStartInfo {
            hparams,
            group_name: run.group.clone().unwrap_or_default(),
            start_time_secs: time,
        };
        writer.hparams(step, time, HParamsData::SessionStartInfo(start))?;
        writer.flush()?;
        self.last_step = step;
        self.writer = Some(writer);
        Ok(())
    }

    fn record(&mut self, record: &Record) -> Result<()> {
        let step = record.step();
        self.last_step = self.last_step.max(step);
        let writer = self.writer()?;
        writer.scalars(step, record.time, &record.scalars())?;
        // Evaluations are rare and worth seeing at once; training windows are flushed with them
        // or at the end.
        if record.fields.get("split").and_then(|s| s.as_str()) != Some("train") {
            writer.flush()?;
        }
        Ok(())
    }

    fn end(&mut self, status: RunStatus) -> Result<()> {
        let step = self.last_step;
        let writer = self.writer()?;
        let status = match status {
            RunStatus::Finished => 1,
            RunStatus::Failed => 2,
            // Stopped by a signal, to be resumed: neither a success nor a failure.
            RunStatus::Killed => 0,
        };
        let end = SessionEndInfo {
            status,
            end_time_secs: now(),
        };
        writer.hparams(step, now(), HParamsData::SessionEndInfo(end))?;
        writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of an event file, checked and decoded.
    fn read_events(path: &Path) -> Vec<Event> {
        let bytes = std::fs::read(path).unwrap();
        let mut events = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(rest[8..12].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(&rest[..8]), "length checksum");
            let data = &rest[12..12 + len];
            let crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data), "data checksum");
            events.push(Event::decode(data).unwrap());
            rest = &rest[16 + len..];
        }
        events
    }

    #[test]
    fn crc32c_is_masked_as_tfrecord_does() {
        // CRC-32C of "123456789" is 0xe3069283 (the standard check value); the masked values
        // are those of TensorBoard's own `masked_crc32c` (tensorflow_stub.pywrap_tensorflow).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn a_run_writes_version_config_hparams_and_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut tb = TensorBoard::new(dir.path().join("tb"));
        let run = RunInfo {
            config_toml: "[optimizer]\nlr = 0.001\n".into(),
            params: [("optimizer.lr".to_string(), Param::Number(0.001))].into(),
            start_time: 1.0e9,
            ..RunInfo::default()
        };
        tb.start(&run).unwrap();
        let line = r#"{"loss":2.5,"lr":0.001,"split":"train","step":5}"#;
        tb.record(&Record::parse(line).unwrap()).unwrap();
        tb.end(RunStatus::Finished).unwrap();
        let path = tb.writer.as_ref().unwrap().path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("events.out.tfevents."));
        let events = read_events(&path);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let tags: Vec<(i64, String)> = events
            .iter()
            .filter_map(|e| match &e.what {
                Some(What::Summary(s)) => {
                    Some(s.value.iter().map(move |v| (e.step, v.tag.clone())))
                }
                _ => None,
            })
            .flatten()
            .collect();
        let tags: Vec<(i64, &str)> = tags.iter().map(|(s, t)| (*s, t.as_str())).collect();
        assert_eq!(
            tags,
            [
                (0, "config/text_summary"),
                (0, "_hparams_/session_start_info"),
                (5, "train/loss"),
                (5, "train/lr"),
                (5, "_hparams_/session_end_info"),
            ]
        );
    }

    #[test]
    fn a_later_file_sorts_after_the_earlier_ones_even_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..3)
            .map(|_| {
                let w = EventWriter::create(dir.path()).unwrap();
                w.path().file_name().unwrap().to_str().unwrap().to_string()
            })
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(
            sorted
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn a_resumed_run_starts_its_file_by_purging_the_steps_after_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut tb = TensorBoard::new(dir.path().to_path_buf());
        let run = RunInfo {
            resumed_from: Some(40),
            ..RunInfo::default()
        };
        tb.start(&run).unwrap();
        tb.end(RunStatus::Killed).unwrap();
        let events = read_events(tb.writer.as_ref().unwrap().path());
        assert_eq!(events[1].step, 41);
        assert_eq!(
            events[1].what,
            Some(What::SessionLog(SessionLog {
                status: proto::SESSION_START
            }))
        );
    }
}
