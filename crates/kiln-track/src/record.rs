//! A run's records, as trackers see them: each line of `metrics.jsonl` (live, or read back by
//! `kiln sync`) and the scalars it holds, named by where they come from.
//!
//! Tags are derived from the record's fields, so that a metric added later (a regression's
//! `rmse`, a new timing) reaches every tracker with no code change: a record with a `split`
//! (`train`, `valid`, `test`) gives `<split>/<field>` for each numeric field (`train/loss`,
//! `train/lr`, `valid/accuracy`); one with an `event` (`checkpoint`, `system`) gives
//! `<event>/<field>` (`checkpoint/write_secs`, `system/rss_bytes`). `step` and `time` are the
//! point's coordinates, not values; text, lists and flags are not scalars.

use serde_json::{Map, Value};

/// One line of `metrics.jsonl`, with the wall-clock time of the point.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The line's fields.
    pub fields: Map<String, Value>,
    /// Seconds since the Unix epoch: the line's `time`, else when the record was made.
    pub time: f64,
}

impl Record {
    /// A record of `fields`; its time is the line's `time` field, or now.
    pub fn new(fields: Map<String, Value>) -> Record {
        let time = fields
            .get("time")
            .and_then(Value::as_f64)
            .unwrap_or_else(now);
        Record { fields, time }
    }

    /// Parses one line of `metrics.jsonl`; `None` for a line that is not a JSON object (a torn
    /// last line of a run that was killed while writing it).
    pub fn parse(line: &str) -> Option<Record> {
        match serde_json::from_str(line) {
            Ok(Value::Object(fields)) => Some(Record::new(fields)),
            _ => None,
        }
    }

    /// The training step the record belongs to (0 when it has none).
    pub fn step(&self) -> u64 {
        self.fields.get("step").and_then(Value::as_u64).unwrap_or(0)
    }

    /// What the record is about: its `split`, or its `event`.
    pub fn group(&self) -> Option<&str> {
        ["split", "event"]
            .iter()
            .find_map(|k| self.fields.get(*k).and_then(Value::as_str))
    }

    /// The record's scalars as `(tag, value)`, in the order of its (sorted) fields.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let Some(group) = self.group() else {
            return Vec::new();
        };
        self.fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "time" | "split" | "event"))
            .filter_map(|(k, v)| Some((format!("{group}/{k}"), v.as_f64()?)))
            .collect()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_from_the_split_or_event_and_the_field_name() {
        let train = Record::parse(
            r#"{"accuracy":0.5,"epoch":0.1,"loss":2.5,"lr":0.001,"split":"train","step":5,"time":1700000000.5}"#,
        )
        .unwrap();
        assert_eq!(train.step(), 5);
        assert_eq!(train.time, 1700000000.5);
        assert_eq!(
            train.scalars(),
            [
                ("train/accuracy".to_string(), 0.5),
                ("train/epoch".to_string(), 0.1),
                ("train/loss".to_string(), 2.5),
                ("train/lr".to_string(), 0.001),
            ]
        );
        let rmse =
            Record::parse(r#"{"rmse":1.5,"loss":2.25,"samples":10,"split":"valid","step":7}"#)
                .unwrap();
        assert_eq!(
            rmse.scalars()
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>(),
            ["valid/loss", "valid/rmse", "valid/samples"]
        );
        let ckpt = Record::parse(
            r#"{"bytes":354171,"dir":"run/step-15","event":"checkpoint","pruned":[],"stall_secs":0.0002,"step":15,"write_secs":0.0035}"#,
        )
        .unwrap();
        assert_eq!(
            ckpt.scalars()
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>(),
            [
                "checkpoint/bytes",
                "checkpoint/stall_secs",
                "checkpoint/write_secs"
            ]
        );
    }

    #[test]
    fn a_torn_or_foreign_line_is_no_record() {
        assert_eq!(Record::parse(r#"{"loss":1.0,"spl"#), None);
        assert_eq!(Record::parse("[1, 2]"), None);
        let plain = Record::parse(r#"{"note":"hello","step":3}"#).unwrap();
        assert!(plain.scalars().is_empty());
    }
}
