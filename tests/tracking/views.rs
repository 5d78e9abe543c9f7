//! Runs seen side by side: `kiln plot` draws their curves to a PNG (text and all, with no fonts
//! installed), `kiln runs` tables them.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::common::{kiln, repo_root, stderr, train};

/// `kiln plot ARGS`, with the system's fonts hidden (a private mount namespace over
/// /usr/share/fonts) where this test may do that (root, util-linux's unshare).
fn plot_without_system_fonts(args: &[&str]) -> (std::process::Output, bool) {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let fonts = Path::new("/usr/share/fonts");
    let hide = fonts.is_dir()
        && Command::new("unshare")
            .args(["--mount", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
    let out = if hide {
        let script = format!(
            "mount -t tmpfs tmpfs {} && test -z \"$(ls {})\" && exec \"$0\" \"$@\"",
            fonts.display(),
            fonts.display()
        );
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                kiln,
            ])
            .args(args)
            .current_dir(repo_root())
            .output()
            .unwrap()
    } else {
        Command::new(kiln)
            .args(args)
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    (out, hide)
}

#[test]
fn plot_draws_every_series_with_its_colour_and_text_without_system_fonts() {
    let tmp = tempfile::tempdir().unwrap();
    let a = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["run.name=\"lr-3e-3\""],
    );
    let b = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["run.name=\"lr-1e-3\"", "optimizer.lr=1e-3"],
    );
    let png = tmp.path().join("curves.png");
    let args = [
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--metric",
        "train/loss,valid/accuracy",
        "--out",
        png.to_str().unwrap(),
    ];
    let (out, hidden) = plot_without_system_fonts(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!("system fonts hidden: {hidden}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let series = summary["series"].as_array().unwrap();
    assert_eq!(series.len(), 4, "{summary}");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width, info.height),
        (
            summary["width"].as_u64().unwrap() as u32,
            summary["height"].as_u64().unwrap() as u32
        )
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let pixel = |x: u32, y: u32| {
        let i = ((y * info.width + x) * 3) as usize;
        (buf[i], buf[i + 1], buf[i + 2])
    };
    for s in series {
        let hex = s["color"].as_str().unwrap();
        let rgb = (0..3)
            .map(|i| u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap())
            .collect::<Vec<_>>();
        let count = (0..info.height)
            .flat_map(|y| (0..info.width).map(move |x| (x, y)))
            .filter(|&(x, y)| pixel(x, y) == (rgb[0], rgb[1], rgb[2]))
            .count();
        assert!(
            count > 50,
            "{} {}: {count} pixels of {hex}",
            s["run"],
            s["metric"]
        );
    }
    // The y-axis labels' strip (left of the axis) holds only text: dark pixels there are glyphs.
    let text = (0..info.height)
        .flat_map(|y| (0..50).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = pixel(x, y);
            r < 100 && g < 100 && b < 100
        })
        .count();
    assert!(
        text > 200,
        "only {text} dark pixels where the axis labels are"
    );
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        !libs.contains("fontconfig") && !libs.contains("freetype"),
        "kiln links a font library:\n{libs}"
    );
}

#[test]
fn plot_names_a_metric_no_run_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["train.max_steps=10"],
    );
    let png = tmp.path().join("x.png");
    let o = kiln(&[
        "plot",
        run.to_str().unwrap(),
        "--metric",
        "valid/rmse",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--metric valid/rmse: no run logged it") && e.contains("train/loss"),
        "{e}"
    );
    assert!(!png.exists());
}

#[test]
fn runs_tables_status_metrics_and_the_keys_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["run.name=\"a\""],
    );
    train(
        "configs/smoke.toml",
        "flex",
        tmp.path(),
        &["run.name=\"b\"", "optimizer.lr=1e-3"],
    );
    let o = kiln(&["runs", tmp.path().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, lr) in rows.iter().zip(["0.003", "0.001"]) {
        assert_eq!(row["status"], "finished");
        assert_eq!(row["step"], 40);
        assert_eq!(row["differs"], serde_json::json!({ "optimizer.lr": lr }));
        assert!(row["best_valid"][0].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["test"]["accuracy"].as_f64().unwrap() > 0.1, "{row}");
    }
    let o = kiln(&["runs", tmp.path().to_str().unwrap()]);
    let table = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].contains("best valid loss")
            && lines[0].contains("test accuracy")
            && lines[0].contains("optimizer.lr"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("finished") && lines[1].contains("40/40"),
        "{table}"
    );
}
