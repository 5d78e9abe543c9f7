//! Allocator settings for training processes.
//!
//! burn's CPU backends allocate a fresh buffer for nearly every tensor operation and free it soon
//! after. glibc's malloc serves blocks above its mmap threshold (128 KiB at first, adjusted up to
//! 32 MiB as the program frees such blocks) with `mmap` and returns them with `munmap`, and trims
//! the top of the heap whenever more than 128 KiB is free there. A training step's activations
//! and gradients are exactly such blocks, so every step paid for page faults, zeroed pages and TLB
//! shoot-downs on every core (`benches/results/cpu-profile.md`). Raising both thresholds keeps the
//! memory in the process, where the next step reuses it.
//!
//! [`tune`] applies this with `mallopt` first thing in the `kiln` binary and whenever Kiln builds a
//! model (before its weights are allocated: applied later it measured slower), so it helps the
//! `kiln` binary and a user's own program that trains through the library alike (a `#[global_allocator]` would
//! only help binaries that set it). It is a no-op on other C libraries, when the user set glibc's
//! malloc tunables themselves (`GLIBC_TUNABLES=glibc.malloc...`), and with `KILN_MALLOC_TUNING=0`.

use std::sync::OnceLock;

/// Blocks up to this size come from the heap instead of `mmap`.
pub const MMAP_THRESHOLD: usize = 1 << 30;
/// Free memory at the top of the heap kept for reuse instead of returned to the system.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// What [`tune`] did, for the run's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// The thresholds were raised.
    Applied,
    /// Left alone: `KILN_MALLOC_TUNING=0`, or the user set glibc's malloc tunables.
    Declined,
    /// Not glibc: nothing to tune.
    Unsupported,
}

/// Raises glibc's mmap and trim thresholds once per process (later calls return the first
/// call's result at the cost of one atomic load).
pub fn tune() -> Tuning {
    static DONE: OnceLock<Tuning> = OnceLock::new();
    *DONE.get_or_init(|| {
        let declined = std::env::var("KILN_MALLOC_TUNING").is_ok_and(|v| v == "0")
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc."));
        if declined {
            return Tuning::Declined;
        }
        apply()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    // Values from glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    const M_MMAP_THRESHOLD: libc::c_int = -3;
    // SAFETY: mallopt only changes malloc's parameters; it is safe to call at any time, also
    // with other threads allocating (it takes the arena locks).
    let ok = unsafe {
        libc::mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    };
    if ok {
        Tuning::Applied
    } else {
        Tuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Unsupported
}

/// Bytes of memory this process can still allocate without swapping, as far as the system
/// says: Linux's `MemAvailable`, lowered to what the process's cgroup (a container's memory
/// limit) has left. `None` where neither is known.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // cgroup v2: memory.max is "max" (unlimited) or a byte count.
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_is_applied_once_and_reports_the_same_result() {
        let first = tune();
        assert_eq!(tune(), first);
        if cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("GLIBC_TUNABLES").is_none()
            && std::env::var_os("KILN_MALLOC_TUNING").is_none()
        {
            assert_eq!(first, Tuning::Applied);
        }
    }
}
