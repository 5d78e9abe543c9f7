//! `kiln export`: a trained model in a format serving systems load.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use kiln_core::rundir::TrainedRun;
use kiln_export::{ExportOptions, Format, Scheme, Source};
use kiln_models::ModelConfig;

use super::{on_device, OnDevice};
use crate::args::BackendArgs;

/// Export a trained model for serving: the Kiln format (run it with `kiln predict`), ONNX
/// (onnxruntime, Triton) for classifiers, or a Hugging Face GPT-2 or Llama folder
/// (transformers) for GPT; weights float32, int8 or int4. A LoRA fine-tune exports with its
/// adapters merged, or alone in PEFT's layout (`--format peft`). Prints a JSON summary with sizes and the metrics
/// measured on the exported model.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint) or a step-<N> directory. Its files are
    /// verified before anything is read.
    run: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Kiln)]
    format: FormatArg,
    /// Weight quantization: none (float32), int8 (one scale per output channel) or int4
    /// (one scale per block of --block-size values of each output channel).
    #[arg(long, value_enum, default_value_t = QuantArg::None)]
    quantize: QuantArg,
    /// int4 block size: values of one output channel sharing a scale [default: 64].
    #[arg(long)]
    block_size: Option<usize>,
    /// int4: training samples (or text windows) whose activations choose each block's
    /// scale (calibration); 0 uses plain max-abs scales [default: 256].
    #[arg(long)]
    calibration_samples: Option<usize>,
    /// The export's directory (written beside it first, moved into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing export in --out.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Kiln,
    Onnx,
    Hf,
    Peft,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantArg {
    None,
    Int8,
    Int4,
}

/// Writes the export and prints its JSON summary.
pub fn exec(args: Args) -> Result<()> {
    let backend = args.backend.kind()?;
    let format = match args.format {
        FormatArg::Kiln => Format::Kiln,
        FormatArg::Onnx => Format::Onnx,
        FormatArg::Hf => Format::Hf,
        FormatArg::Peft => Format::Peft,
    };
    let scheme = scheme(args.quantize, args.block_size, args.calibration_samples)?;
    // The cheap checks first: the checkpoint is read and hashed only after them.
    let run = TrainedRun::find(&args.run)?;
    kiln_export::check_supported(&ModelConfig::of(&run.config)?, format, scheme)?;
    kiln_export::export::check_out(&args.out, args.overwrite, Some(&run.run_dir))?;
    let source = Source::open(&args.run)?;
    let opts = ExportOptions {
        format,
        scheme,
        out: args.out,
        overwrite: args.overwrite,
        calibration_samples: args.calibration_samples.unwrap_or(256),
        backend: backend.resolve()?.to_string(),
    };
    let summary = on_device(backend, Export { source, opts })?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The quantization the flags ask for; flags that do not apply to it are errors.
fn scheme(
    quantize: QuantArg,
    block_size: Option<usize>,
    calibration_samples: Option<usize>,
) -> Result<Scheme> {
    let scheme = match quantize {
        QuantArg::None => Scheme::None,
        QuantArg::Int8 => Scheme::Int8,
        QuantArg::Int4 => Scheme::Int4 {
            block: block_size.unwrap_or(64),
        },
    };
    let int4 = matches!(scheme, Scheme::Int4 { .. });
    if block_size.is_some() && !int4 {
        bail!("--block-size applies to --quantize int4 only");
    }
    if block_size == Some(0) {
        bail!("--block-size: must be at least 1");
    }
    if calibration_samples.is_some() && !int4 {
        bail!("--calibration-samples applies to --quantize int4 only (int8 uses max-abs scales)");
    }
    Ok(scheme)
}

struct Export {
    source: Source,
    opts: ExportOptions,
}

impl OnDevice for Export {
    type Output = serde_json::Value;
    fn run<B: Backend>(self, device: B::Device) -> Result<serde_json::Value> {
        kiln_export::export::<B>(self.source, &self.opts, &device)
    }
}
