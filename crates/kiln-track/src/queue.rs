//! [`Tracking`]: the trackers of a run, on a thread of their own behind a bounded queue, so that
//! a slow or unreachable tracker never stops or slows training.
//!
//! The training thread only hands records over ([`Tracking::record`] never blocks: when the queue
//! is full the record is counted as not sent, and `kiln sync` can send it later from
//! `metrics.jsonl`). At the end, [`Tracking::finish`] waits for the trackers at most the exit
//! timeout, then leaves them behind, and reports in one line what was not sent.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use crate::record::Record;
use crate::tracker::{RunInfo, RunStatus, Tracker};

/// Records the queue holds before new ones are counted as not sent.
pub const QUEUE_LEN: usize = 4096;

enum Message {
    Record(Record),
    End(RunStatus),
}

/// The trackers of a run, running on their own thread.
pub struct Tracking {
    sender: SyncSender<Message>,
    done: Receiver<Vec<TrackerReport>>,
    names: Vec<&'static str>,
    /// Records the queue refused (full).
    dropped: u64,
    exit_timeout: Duration,
}

/// What happened to one tracker's records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackerReport {
    /// The tracker (`tensorboard`, `mlflow`).
    pub name: &'static str,
    /// Records it took.
    pub sent: u64,
    /// Records it could not take (its error below).
    pub failed: u64,
    /// Its first error, if any.
    pub error: Option<String>,
}

/// The outcome of a run's tracking.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Each tracker's; a tracker missing here did not finish within the exit timeout.
    pub trackers: Vec<TrackerReport>,
    /// Trackers still busy when the exit timeout ran out.
    pub unfinished: Vec<&'static str>,
    /// Records the full queue refused (every tracker missed them).
    pub dropped: u64,
}

impl Report {
    /// Whether every record reached every tracker.
    pub fn complete(&self) -> bool {
        self.unfinished.is_empty()
            && self.dropped == 0
            && self
                .trackers
                .iter()
                .all(|t| t.failed == 0 && t.error.is_none())
    }

    /// One line for the log: what was not sent, and how to send it.
    pub fn summary(&self, run_dir: &std::path::Path) -> String {
        let mut parts = Vec::new();
        for t in &self.trackers {
            if let Some(e) = &t.error {
                parts.push(format!(
                    "{}: {} of {} records not sent ({e})",
                    t.name,
                    t.failed,
                    t.sent + t.failed
                ));
            }
        }
        for name in &self.unfinished {
            parts.push(format!("{name}: did not finish within the exit timeout"));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} records dropped by the full tracking queue",
                self.dropped
            ));
        }
        if parts.is_empty() {
            return "tracking: every record sent".into();
        }
        format!(
            "tracking incomplete: {}; metrics.jsonl has everything: send it with `kiln sync {}`",
            parts.join("; "),
            run_dir.display()
        )
    }
}

impl Tracking {
    /// Starts `trackers` on their own thread for `run`; [`Tracking::finish`] waits for them at
    /// most `exit_timeout`.
    pub fn spawn(
        trackers: Vec<Box<dyn Tracker>>,
        run: RunInfo,
        exit_timeout: Duration,
    ) -> Tracking {
        let names = trackers.iter().map(|t| t.name()).collect();
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LEN);
        let (done_sender, done) = mpsc::channel();
        thread::Builder::new()
            .name("kiln-tracking".into())
            .spawn(move || {
                let reports = serve(trackers, &run, receiver);
                // The run may have stopped waiting: nobody to tell then.
                let _ = done_sender.send(reports);
            })
            .expect("the OS starts a thread");
        Tracking {
            sender,
            done,
            names,
            dropped: 0,
            exit_timeout,
        }
    }

    /// Hands one record to the trackers; never blocks.
    pub fn record(&mut self, record: Record) {
        match self.sender.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    /// Ends the run with `status` and waits for the trackers to finish, at most the exit timeout
    /// in all.
    pub fn finish(self, status: RunStatus) -> Report {
        let deadline = Instant::now() + self.exit_timeout;
        let mut end = Message::End(status);
        // The queue may be full of records a slow tracker has yet to take.
        loop {
            match self.sender.try_send(end) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    end = back;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(left) {
            Ok(trackers) => Report {
                trackers,
                unfinished: Vec::new(),
                dropped: self.dropped,
            },
            Err(_) => Report {
                trackers: Vec::new(),
                unfinished: self.names,
                dropped: self.dropped,
            },
        }
    }
}

/// The tracking thread: every record to every tracker that started; a tracker's error is counted
/// and the tracker goes on (a server that was down may be back).
fn serve(
    mut trackers: Vec<Box<dyn Tracker>>,
    run: &RunInfo,
    receiver: Receiver<Message>,
) -> Vec<TrackerReport> {
    let mut reports: Vec<TrackerReport> = trackers
        .iter()
        .map(|t| TrackerReport {
            name: t.name(),
            ..TrackerReport::default()
        })
        .collect();
    let mut started = vec![false; trackers.len()];
    for (i, t) in trackers.iter_mut().enumerate() {
        match t.start(run) {
            Ok(()) => started[i] = true,
            Err(e) => reports[i].error = Some(format!("{e:#}")),
        }
    }
    let mut status = RunStatus::Failed;
    while let Ok(message) = receiver.recv() {
        match message {
            Message::Record(record) => {
                for (i, t) in trackers.iter_mut().enumerate() {
                    if !started[i] {
                        reports[i].failed += 1;
                        continue;
                    }
                    match t.record(&record) {
                        Ok(()) => reports[i].sent += 1,
                        Err(e) => {
                            reports[i].failed += 1;
                            reports[i].error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            }
            Message::End(s) => {
                status = s;
                break;
            }
        }
    }
    for (i, t) in trackers.iter_mut().enumerate() {
        if started[i] {
            if let Err(e) = t.end(status) {
                reports[i].error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps what it got; sleeps `delay` per record.
    struct Slow {
        got: Arc<Mutex<Vec<u64>>>,
        delay: Duration,
        fail_start: bool,
    }

    impl Tracker for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn start(&mut self, _: &RunInfo) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail_start, "connection refused");
            Ok(())
        }
        fn record(&mut self, record: &Record) -> anyhow::Result<()> {
            thread::sleep(self.delay);
            self.got.lock().unwrap().push(record.step());
            Ok(())
        }
        fn end(&mut self, _: RunStatus) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn record(step: u64) -> Record {
        Record::parse(&format!(r#"{{"loss":1.0,"split":"train","step":{step}}}"#)).unwrap()
    }

    #[test]
    fn every_record_reaches_a_tracker_that_keeps_up() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let slow = Slow {
            got: got.clone(),
            delay: Duration::ZERO,
            fail_start: false,
        };
        let mut tracking = Tracking::spawn(
            vec![Box::new(slow)],
            RunInfo::default(),
            Duration::from_secs(10),
        );
        for step in 1..=100 {
            tracking.record(record(step));
        }
        let report = tracking.finish(RunStatus::Finished);
        assert!(report.complete(), "{report:?}");
        assert_eq!(report.trackers[0].sent, 100);
        assert_eq!(*got.lock().unwrap(), (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_tracker_that_never_answers_costs_at_most_the_exit_timeout() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let slow = Slow {
            got,
            delay: Duration::from_secs(3600),
            fail_start: false,
        };
        let mut tracking = Tracking::spawn(
            vec![Box::new(slow)],
            RunInfo::default(),
            Duration::from_millis(300),
        );
        let began = Instant::now();
        for step in 0..(QUEUE_LEN as u64 + 10) {
            tracking.record(record(step));
        }
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "recording blocked: {:?}",
            began.elapsed()
        );
        let report = tracking.finish(RunStatus::Finished);
        let waited = began.elapsed();
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        assert_eq!(report.unfinished, ["slow"]);
        assert!(report.dropped >= 9, "{report:?}");
        let line = report.summary(std::path::Path::new("runs/a"));
        assert!(
            line.contains("slow: did not finish") && line.contains("kiln sync runs/a"),
            "{line}"
        );
    }

    #[test]
    fn a_tracker_that_cannot_start_is_reported_and_the_others_go_on() {
        let (a, b) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let down = Slow {
            got: a.clone(),
            delay: Duration::ZERO,
            fail_start: true,
        };
        let up = Slow {
            got: b.clone(),
            delay: Duration::ZERO,
            fail_start: false,
        };
        let mut tracking = Tracking::spawn(
            vec![Box::new(down), Box::new(up)],
            RunInfo::default(),
            Duration::from_secs(10),
        );
        tracking.record(record(1));
        tracking.record(record(2));
        let report = tracking.finish(RunStatus::Finished);
        assert!(!report.complete());
        assert_eq!((report.trackers[0].sent, report.trackers[0].failed), (0, 2));
        assert_eq!(
            report.trackers[0].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(*b.lock().unwrap(), [1, 2]);
        assert!(a.lock().unwrap().is_empty());
        assert!(report
            .summary(std::path::Path::new("r"))
            .contains("slow: 2 of 2 records not sent (connection refused)"));
    }
}
