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

/// The output and the input gradient of `sum(r * f(x))`, for `x` of `dims` and a fixed `r` of the
/// output's shape, both filled with a deterministic pattern spread over `[-spread, spread]`.
pub(crate) fn output_and_grad<B: burn::tensor::backend::AutodiffBackend>(
    dims: [usize; 3],
    spread: f32,
    f: impl FnOnce(burn::tensor::Tensor<B, 3>) -> burn::tensor::Tensor<B, 3>,
) -> [Vec<f32>; 2] {
    use burn::tensor::{Tensor, TensorData};
    let device = Default::default();
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 / 50.0 - 1.0) * spread)
            .collect()
    };
    let x = Tensor::<B, 3>::from_data(
        TensorData::new(values(dims.iter().product(), 0), dims),
        &device,
    )
    .require_grad();
    let y = f(x.clone());
    let r = Tensor::<B, 3>::from_data(
        TensorData::new(values(y.dims().iter().product(), 1), y.dims()),
        &device,
    );
    let grads = (y.clone() * r).sum().backward();
    [
        y.inner().into_data().to_vec().unwrap(),
        x.grad(&grads).unwrap().into_data().to_vec().unwrap(),
    ]
}
