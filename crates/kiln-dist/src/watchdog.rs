//! A deadline on every collective: if one does not complete within the timeout (a worker died,
//! hung or never joined), the process prints an error naming the collective and exits non-zero
//! instead of waiting forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// What to do, besides exiting, when a deadline passes (e.g. `MPI_Abort`, which also stops the
/// other processes of the job).
pub type AbortHook = Box<dyn Fn() + Send + Sync>;

struct State {
    who: String,
    timeout: Duration,
    /// The collective in progress and when it began.
    busy: Mutex<Option<(Instant, String)>>,
    /// Set by SIGINT/SIGTERM: a launcher tearing the job down after a worker died.
    interrupt: Option<Arc<AtomicBool>>,
    abort: Option<AbortHook>,
}

/// Watches the collectives of one worker from a background thread.
#[derive(Clone)]
pub struct Watchdog {
    state: Arc<State>,
}

/// Marks a collective in progress until dropped.
pub struct Guard<'a> {
    watchdog: &'a Watchdog,
}

/// After a stop signal, how long a collective may still wait for the others.
const AFTER_SIGNAL: Duration = Duration::from_secs(5);

impl Watchdog {
    /// `who` names the worker in messages ("rank 1 of 3").
    pub fn new(
        who: String,
        timeout: Duration,
        interrupt: Option<Arc<AtomicBool>>,
        abort: Option<AbortHook>,
    ) -> Watchdog {
        let state = Arc::new(State {
            who,
            timeout,
            busy: Mutex::new(None),
            interrupt,
            abort,
        });
        let weak = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("kiln-watchdog".into())
            .spawn(move || watch(weak))
            .expect("cannot spawn the watchdog thread");
        Watchdog { state }
    }

    /// Starts the deadline of the collective `what`; it ends when the guard is dropped.
    pub fn guard(&self, what: &str) -> Guard<'_> {
        *self.state.busy.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), what.to_string()));
        Guard { watchdog: self }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        *self
            .watchdog
            .state
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn watch(state: Weak<State>) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let Some(state) = state.upgrade() else { return };
        let busy = state.busy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((since, what)) = busy else { continue };
        let waited = since.elapsed();
        let signalled = state
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let reason = if waited > state.timeout {
            format!(
                "{what} did not complete within distributed.timeout_secs = {} s: another worker died, hung or never joined",
                state.timeout.as_secs_f64()
            )
        } else if signalled && waited > AFTER_SIGNAL {
            format!(
                "stopped by a signal while waiting {:.0} s for the other workers in {what}: another worker died or the job is being cancelled",
                waited.as_secs_f64()
            )
        } else {
            continue;
        };
        eprintln!("error: {}: {reason}; stopping", state.who);
        if let Some(abort) = &state.abort {
            abort();
        }
        std::process::exit(1);
    }
}
