//! A bounded load generator for `kiln serve` (benches/run_serve.py drives it): `CONCURRENCY`
//! clients, each with its own keep-alive connection, send `REQUESTS` infer requests in all (one
//! Fashion-MNIST test image each, cycling through the first 1,000) to one model, and it prints one
//! JSON line: throughput, latency percentiles, errors, and the CPU time this generator itself
//! used (it shares the machine's cores with the server).
//!
//! `kiln-serve-load URL MODEL IDX_IMAGES CONCURRENCY REQUESTS`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

mod cpu_time;

use cpu_time::process_cpu_seconds;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, model, images, concurrency, requests] = args.as_slice() else {
        bail!("usage: kiln-serve-load URL MODEL IDX_IMAGES CONCURRENCY REQUESTS");
    };
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    let requests: usize = requests.parse().context("REQUESTS")?;
    let bodies = bodies(images, 1000)?;
    let endpoint = format!("{url}/v2/models/{model}/infer");

    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(requests));
    let errors = AtomicUsize::new(0);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    let t = Instant::now();
                    let ok = agent
                        .post(&endpoint)
                        .set("Content-Type", "application/json")
                        .send_string(&bodies[i % bodies.len()])
                        .is_ok_and(|r| r.into_string().is_ok());
                    mine.push(t.elapsed().as_secs_f64());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    let mut l = latencies.into_inner().unwrap();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1] * 1e3;
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "requests": requests,
            "errors": errors.load(Ordering::Relaxed),
            "seconds": seconds,
            "throughput": requests as f64 / seconds,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "generator_cpu_seconds": cpu,
        })
    );
    Ok(())
}

/// Infer request bodies for the first `n` images of an IDX image file: `[1, c, h, w]`, pixels /
/// 255 (as Kiln's IDX reader gives them).
fn bodies(path: &str, n: usize) -> Result<Vec<String>> {
    let (pixels, shape) = kiln_data::load_idx_images(std::path::Path::new(path))?;
    let [c, h, w] = shape;
    Ok(pixels
        .chunks_exact(c * h * w)
        .take(n)
        .map(|img| {
            json!({"inputs": [{"name": "input", "shape": [1, c, h, w], "datatype": "FP32", "data": img}]})
                .to_string()
        })
        .collect())
}
