//! System metrics of a run (`tracking.system_metrics`): the process's resident memory and CPU use
//! over each training log window and, on a GPU backend, the device memory its allocator holds, as
//! `{"event": "system"}` lines of `metrics.jsonl` (and so `system/rss_bytes`,
//! `system/cpu_percent`, `system/gpu_memory_bytes`, `system/gpu_reserved_bytes` in every
//! tracker). Read with sysinfo (already in the dependency tree), one process refreshed per window,
//! and the CubeCL allocator's own count ([`kiln_core::device_memory`]): microseconds.

use std::time::Instant;

use kiln_core::device_memory::DeviceMemory;
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
    /// Bytes of live tensors on the (rank 0) GPU, for the wgpu and CUDA backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<u64>,
    /// Bytes the allocator holds on that GPU (live tensors, padding and its free pools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_reserved_bytes: Option<u64>,
}

/// Reads a device's memory (see [`kiln_core::device_memory::device_memory_probe`]).
pub type DeviceProbe = Box<dyn FnMut() -> Option<DeviceMemory> + Send>;

/// Samples this process once per log window.
pub struct SystemSampler {
    system: System,
    pid: Pid,
    cpu_ms: u64,
    at: Instant,
    device: Option<DeviceProbe>,
}

impl SystemSampler {
    /// A sampler of this process and, with a `device` probe, of its GPU's memory; `None` where
    /// the system does not say which process this is.
    pub fn new(device: Option<DeviceProbe>) -> Option<SystemSampler> {
        let pid = sysinfo::get_current_pid().ok()?;
        let mut sampler = SystemSampler {
            system: System::new(),
            pid,
            cpu_ms: 0,
            at: Instant::now(),
            device,
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
        let gpu = self.device.as_mut().and_then(|probe| probe());
        Some(SystemEvent {
            step,
            event: "system",
            rss_bytes,
            cpu_percent,
            gpu_memory_bytes: gpu.map(|m| m.in_use_bytes),
            gpu_reserved_bytes: gpu.map(|m| m.reserved_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_has_memory_and_cpu_use() {
        let mut sampler = SystemSampler::new(None).expect("Linux names this process");
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
        assert_eq!((e.gpu_memory_bytes, e.gpu_reserved_bytes), (None, None));
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains("gpu"), "{line}");
    }

    #[test]
    fn a_device_probe_adds_gpu_memory() {
        let probe: DeviceProbe = Box::new(|| {
            Some(DeviceMemory {
                in_use_bytes: 3,
                reserved_bytes: 8,
            })
        });
        let e = SystemSampler::new(Some(probe)).unwrap().sample(1).unwrap();
        assert_eq!(
            (e.gpu_memory_bytes, e.gpu_reserved_bytes),
            (Some(3), Some(8))
        );
    }
}
