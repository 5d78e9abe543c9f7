//! System metrics of a run (`tracking.system_metrics`): the process's resident memory and CPU use
//! over each training log window, as `{"event": "system"}` lines of `metrics.jsonl` (and so
//! `system/rss_bytes`, `system/cpu_percent` in every tracker). Read with sysinfo (already in the
//! dependency tree), one process refreshed per window: microseconds.

use std::time::Instant;

use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// The system metrics at the end of a log window (`"event": "system"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SystemEvent {
    /// The step that ended the window.
    pub step: usize,
    /// Always `"system"`.
    pub event: &'static str,
    /// The process's resident memory, in bytes.
    pub rss_bytes: u64,
    /// The process's CPU time over the window's wall time, in percent of one core (200 = two
    /// cores busy).
    pub cpu_percent: f64,
}

/// Samples this process once per log window.
pub struct SystemSampler {
    system: System,
    pid: Pid,
    cpu_ms: u64,
    at: Instant,
}

impl SystemSampler {
    /// A sampler of this process; `None` where the system does not say which process this is.
    pub fn new() -> Option<SystemSampler> {
        let pid = sysinfo::get_current_pid().ok()?;
        let mut sampler = SystemSampler {
            system: System::new(),
            pid,
            cpu_ms: 0,
            at: Instant::now(),
        };
        sampler.cpu_ms = sampler.refresh()?.1;
        Some(sampler)
    }

    /// `(resident bytes, accumulated CPU milliseconds)` now.
    fn refresh(&mut self) -> Option<(u64, u64)> {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let p = self.system.process(self.pid)?;
        Some((p.memory(), p.accumulated_cpu_time()))
    }

    /// The metrics since the last sample (or since the sampler was made).
    pub fn sample(&mut self, step: usize) -> Option<SystemEvent> {
        let (rss_bytes, cpu_ms) = self.refresh()?;
        let wall_ms = self.at.elapsed().as_secs_f64() * 1000.0;
        let cpu_percent = if wall_ms > 0.0 {
            cpu_ms.saturating_sub(self.cpu_ms) as f64 / wall_ms * 100.0
        } else {
            0.0
        };
        self.cpu_ms = cpu_ms;
        self.at = Instant::now();
        Some(SystemEvent {
            step,
            event: "system",
            rss_bytes,
            cpu_percent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_has_memory_and_cpu_use() {
        let mut sampler = SystemSampler::new().expect("Linux names this process");
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let e = sampler.sample(7).unwrap();
        assert_eq!((e.step, e.event), (7, "system"));
        assert!(e.rss_bytes > 1 << 20, "{e:?}");
        // One thread spun for the whole window (sysinfo counts CPU time in 10 ms ticks).
        assert!(e.cpu_percent > 50.0 && e.cpu_percent < 250.0, "{e:?}");
    }
}
