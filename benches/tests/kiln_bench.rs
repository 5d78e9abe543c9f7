//! `kiln-bench` as the benchmark drivers (run.py, guard.py) call it: one JSON line per run, for
//! Kiln's step and the bare burn loop, and clear errors for bad flags.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("kiln-bench runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = bench(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn kiln_and_bare_burn_steps_report_throughput_and_a_finite_loss() {
    for model in ["mlp", "cnn", "gpt"] {
        for framework in ["kiln", "burn"] {
            let mut args = vec![
                "--backend",
                "flex",
                "--framework",
                framework,
                "--model",
                model,
            ];
            args.extend(["--batch", "4", "--warmup", "1", "--steps", "2"]);
            if model == "gpt" {
                args.extend(["--n-layer", "1", "--block", "16"]);
            }
            let r = json(&args);
            assert_eq!(r["framework"], framework);
            assert!(r["steps_per_sec"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["final_loss"].as_f64().unwrap().is_finite(), "{r}");
        }
    }
}

#[test]
fn a_slowdown_makes_the_timed_steps_slower() {
    let args = [
        "--backend",
        "flex",
        "--model",
        "mlp",
        "--batch",
        "32",
        "--warmup",
        "5",
        "--steps",
        "60",
    ];
    let plain = json(&args)["seconds"].as_f64().unwrap();
    let mut slowed_args = args.to_vec();
    slowed_args.extend(["--slowdown", "3"]);
    let slowed = json(&slowed_args)["seconds"].as_f64().unwrap();
    assert!(
        slowed > 1.8 * plain,
        "slowdown 3: {slowed} s against {plain} s"
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    for (args, expected) in [
        (
            &["--framework", "tf"][..],
            "--framework tf: choose kiln or burn",
        ),
        (&["--slowdown", "0.5"][..], "expected a factor >= 1"),
        (
            &["--model", "vgg"][..],
            "--model vgg: choose mlp, cnn, resnet or gpt",
        ),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// `kiln-bench` from the repository root, where configs name their datasets.
fn bench_at_root(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("kiln-bench runs")
}

#[test]
fn the_step_can_train_on_the_batches_of_a_kiln_train_config() {
    let mut args = vec!["--backend", "flex", "--model", "mlp", "--batch", "64"];
    args.extend(["--warmup", "1", "--steps", "3", "--batches", "3"]);
    let synthetic = bench_at_root(&args);
    args.extend(["--data", "benches/guard-train.toml"]);
    let real = bench_at_root(&args);
    let parse = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (synthetic, real) = (parse(&synthetic), parse(&real));
    assert_eq!(synthetic["data"], "synthetic");
    assert_eq!(real["data"], "config");
    let loss = real["final_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss != synthetic["final_loss"].as_f64().unwrap());

    // Batches that are not the benchmark's shape are refused, naming what to change.
    args[5] = "32";
    let out = bench_at_root(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not 32 samples of 784 features") && err.contains("data.batch_size = 32"),
        "{err}"
    );
}
