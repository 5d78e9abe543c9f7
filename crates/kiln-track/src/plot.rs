//! `kiln plot`: metrics of one or more runs against the step, as a PNG. One panel per metric,
//! the runs overlaid with a legend; text is drawn with DejaVu Sans, bundled in the binary
//! (assets/, Bitstream Vera licence), so it works on a machine with no fonts installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::record::Record;

/// The bundled font.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Series colours (matplotlib's tab10), in order.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];
const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 360;

/// One line drawn.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    /// The run (its directory's name).
    pub run: String,
    /// The metric (`valid/loss`).
    pub metric: String,
    /// Its colour, `#rrggbb`.
    pub color: String,
    /// Points drawn.
    pub points: usize,
}

/// What `kiln plot` drew.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    /// The PNG.
    pub out: PathBuf,
    /// Its size in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// The lines, in legend order.
    pub series: Vec<Series>,
}

/// A metric's points, `(step, value)`.
type Points = Vec<(f64, f64)>;

/// A run's points of each metric.
fn points(run: &Path) -> Result<BTreeMap<String, Points>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is {} a run directory?",
            path.display(),
            run.display()
        )
    })?;
    let mut out = BTreeMap::<String, Points>::new();
    for record in text.lines().filter_map(Record::parse) {
        let step = record.step() as f64;
        for (tag, v) in record.scalars() {
            if v.is_finite() {
                out.entry(tag).or_default().push((step, v));
            }
        }
    }
    Ok(out)
}

/// Draws `metrics` of `runs` to `out` (a `.png`).
pub fn plot(runs: &[PathBuf], metrics: &[String], out: &Path) -> Result<Plot> {
    if runs.is_empty() || metrics.is_empty() {
        bail!("kiln plot needs at least one run and one metric");
    }
    if out.extension().and_then(|e| e.to_str()) != Some("png") {
        bail!(
            "--out {}: kiln plot writes PNG; name the file .png",
            out.display()
        );
    }
    let data: Vec<(String, BTreeMap<String, Points>)> = runs
        .iter()
        .map(|r| {
            let name = r.file_name().map_or_else(
                || r.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok((name, points(r)?))
        })
        .collect::<Result<_>>()?;
    for metric in metrics {
        if !data.iter().any(|(_, p)| p.contains_key(metric)) {
            let known: std::collections::BTreeSet<&String> =
                data.iter().flat_map(|(_, p)| p.keys()).collect();
            let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
            bail!(
                "--metric {metric}: no run logged it; they logged {}",
                known.join(", ")
            );
        }
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let height = PANEL_HEIGHT * metrics.len() as u32;
    let mut series = Vec::new();
    {
        let root = BitMapBackend::new(out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let panels = root.split_evenly((metrics.len(), 1));
        for (panel, metric) in panels.iter().zip(metrics) {
            let lines: Vec<(usize, &String, &Points)> = data
                .iter()
                .enumerate()
                .filter_map(|(i, (name, p))| Some((i, name, p.get(metric)?)))
                .collect();
            let all = lines.iter().flat_map(|(_, _, p)| p.iter());
            let (x_max, (y_min, y_max)) = all.fold(
                (1.0f64, (f64::INFINITY, f64::NEG_INFINITY)),
                |(x, (lo, hi)), &(s, v)| (x.max(s), (lo.min(v), hi.max(v))),
            );
            let pad = if y_max > y_min {
                (y_max - y_min) * 0.05
            } else {
                y_min.abs().max(1.0) * 0.1
            };
            let span = y_max - y_min + 2.0 * pad;
            let mut chart = ChartBuilder::on(panel)
                .caption(metric, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(85)
                .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
                .map_err(draw_error)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(metric.as_str())
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| compact(*y, span))
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(draw_error)?;
            for (i, name, p) in lines {
                let (r, g, b) = PALETTE[i % PALETTE.len()];
                let color = RGBColor(r, g, b);
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
                    .map_err(draw_error)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                    });
                series.push(Series {
                    run: name.clone(),
                    metric: metric.clone(),
                    color: format!("#{r:02x}{g:02x}{b:02x}"),
                    points: p.len(),
                });
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(Plot {
        out: out.to_path_buf(),
        width: WIDTH,
        height,
        series,
    })
}

/// An axis label that fits its strip, with a digit more than ticks `span` / 10 apart need
/// (ticks may fall on halves), trailing zeros dropped: `0.25`, `2`, `1.5e-5`, `1.3052e8`.
fn compact(v: f64, span: f64) -> String {
    let tick = (span / 10.0).abs().max(f64::MIN_POSITIVE).log10().floor() as i32;
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        let digits = (a.log10().floor() as i32 - tick + 1).clamp(1, 8) as usize;
        let text = format!("{v:.digits$e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        format!("{}e{exponent}", trim(mantissa))
    } else {
        trim(&format!("{v:.*}", (1 - tick).clamp(0, 8) as usize))
    }
}

fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn axis_labels_have_the_digits_their_ticks_need() {
        assert_eq!(compact(0.25, 1.0), "0.25");
        assert_eq!(compact(2.0, 2.0), "2");
        assert_eq!(compact(0.8123, 0.2), "0.812");
        assert_eq!(compact(130_520_000.0, 1_300_000.0), "1.3052e8");
        assert_eq!(compact(1.5e-5, 1e-5), "1.5e-5");
    }
}
