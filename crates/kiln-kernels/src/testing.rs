//! Helpers of the kernels' tests.

/// Asserts that `ours` has `theirs`'s length and that every element is within `tolerance` of
/// it, relative to the largest magnitude in `theirs` (at least 1); `what` names the values in
/// the message.
pub(crate) fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tolerance: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (x, y) in ours.iter().zip(theirs) {
        assert!(
            (x - y).abs() <= tolerance * scale.max(1.0),
            "{what}: {x} vs {y}"
        );
    }
}

/// `f()` run on a rayon pool of `threads` threads.
pub(crate) fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}
