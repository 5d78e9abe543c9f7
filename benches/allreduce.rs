//! All-reduce throughput of Kiln's MPI communicator at the gradient sizes of the shipped models,
//! against a bare `MPI_Allreduce` of the same host buffer in the same run (the engine's own
//! speed; Kiln adds the copy of the fused gradient tensor to and from the host).
//!
//! `mpirun -np N kiln-allreduce [--reps 20]` (built with `--features mpi`); rank 0 prints one JSON
//! line per size. `run_distributed.py` runs it and writes benches/results/distributed.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use kiln_dist::mpi::{Mpi, MpiSession};
use kiln_dist::Communicator;

/// (model, parameters): the gradient buffer of one step of each shipped config.
const SIZES: &[(&str, usize)] = &[
    ("smoke MLP (configs/smoke.toml)", 25_450),
    ("Fashion-MNIST MLP", 269_322),
    ("Fashion-MNIST CNN", 206_922),
    ("Shakespeare char GPT (CPU)", 809_984),
    ("Shakespeare char GPT (GPU config)", 10_771_200),
    ("GPT-2 124M", 124_475_904),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(20), |s| s.parse())?;
    let session = Arc::new(MpiSession::init(Duration::from_secs(600), None)?);
    let world = session.size();
    let mut comm = Mpi::new(session.clone());
    let device = Default::default();
    for &(model, n) in SIZES {
        // Fewer repetitions for the large buffers (each is hundreds of MB).
        let reps = if n > 50_000_000 { reps.min(5) } else { reps };
        let host: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let mut recv = vec![0f32; n];
        let mut bare = Vec::new();
        let mut kiln = Vec::new();
        for rep in 0..reps + 1 {
            let started = Instant::now();
            session.all_reduce_f32(&host, &mut recv, "benchmark");
            let t_bare = started.elapsed().as_secs_f64();
            let x = Tensor::<Flex, 1>::from_data(TensorData::new(host.clone(), [n]), &device);
            let started = Instant::now();
            let y = comm.all_reduce_sum(x, "benchmark")?;
            let t_kiln = started.elapsed().as_secs_f64();
            if rep == 0 {
                // Warm-up; also a correctness check: every element summed over the workers.
                let v: Vec<f32> = y
                    .into_data()
                    .into_vec()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                anyhow::ensure!(v[3] == 3.0 * world as f32, "wrong all-reduce result");
                continue;
            }
            bare.push(t_bare);
            kiln.push(t_kiln);
        }
        if session.rank() == 0 {
            let bytes = (n * 4) as f64;
            let (tb, tk) = (median(bare), median(kiln));
            // NCCL's convention: bus bandwidth = algorithm bandwidth x 2 (N - 1) / N.
            let bus = 2.0 * (world as f64 - 1.0) / world as f64;
            println!(
                "{}",
                serde_json::json!({
                    "model": model, "params": n, "bytes": bytes, "workers": world, "reps": reps,
                    "mpi_secs": tb, "kiln_secs": tk,
                    "mpi_bus_gbps": bytes * bus / tb / 1e9, "kiln_bus_gbps": bytes * bus / tk / 1e9,
                })
            );
        }
    }
    Ok(())
}
