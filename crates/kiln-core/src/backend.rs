//! Backend choice: the one place where a run-time backend name becomes a concrete burn type.
//!
//! Generic code implements [`BackendTask`]; [`dispatch`] instantiates it for the chosen backend.
//! Each backend is a cargo feature of the `kiln` binary; asking for one that was not compiled in is
//! an error naming the feature.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;

use crate::config::Precision;

/// A backend as the user names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA when compiled in and a GPU is present, otherwise flex.
    Auto,
    /// `flex`: burn's flex CPU backend (cargo feature `flex`).
    Flex,
    /// `ndarray`: burn's ndarray CPU backend (cargo feature `ndarray`).
    Ndarray,
    /// `wgpu`: GPUs through WebGPU (burn's wgpu backend, cargo feature `wgpu`).
    Wgpu,
    /// `cuda`: NVIDIA GPUs through CUDA (cargo feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// The names `--backend` accepts, for help and error messages.
    pub const NAMES: &'static str = "auto, flex, ndarray, wgpu, cuda";

    /// The name as the user writes it (`--backend flex`), which is also the cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this build of Kiln contains the backend.
    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Auto => true,
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Turns `auto` into a concrete backend and checks that the backend is compiled in.
    pub fn resolve(self) -> Result<BackendKind> {
        let kind = match self {
            BackendKind::Auto if BackendKind::Cuda.compiled_in() && nvidia_gpu_present() => {
                BackendKind::Cuda
            }
            BackendKind::Auto if BackendKind::Flex.compiled_in() => BackendKind::Flex,
            BackendKind::Auto if BackendKind::Ndarray.compiled_in() => BackendKind::Ndarray,
            BackendKind::Auto => {
                bail!("--backend auto: no CPU backend is compiled in; rebuild with --features flex")
            }
            other => other,
        };
        if !kind.compiled_in() {
            bail!(
                "backend '{}' is not compiled into this kiln; rebuild with `cargo build --release --features {}`",
                kind.name(),
                kind.name()
            );
        }
        Ok(kind)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => BackendKind::Auto,
            "flex" => BackendKind::Flex,
            "ndarray" => BackendKind::Ndarray,
            "wgpu" => BackendKind::Wgpu,
            "cuda" => BackendKind::Cuda,
            _ => bail!("unknown backend '{s}'; choose one of {}", Self::NAMES),
        })
    }
}

/// Checks that `backend` (resolved) can train in `precision`: the CPU backends compute in f32
/// only, and WebGPU shaders have f16 but no bf16.
pub fn check_precision(backend: BackendKind, precision: Precision) -> Result<()> {
    match (backend, precision) {
        (_, Precision::F32) | (BackendKind::Cuda, _) | (BackendKind::Wgpu, Precision::F16) => Ok(()),
        (BackendKind::Wgpu, _) => bail!(
            "train.precision = \"{}\": the wgpu backend has no bf16 (WebGPU shaders support f16 only); use train.precision = \"f16\", or --backend cuda",
            precision.name()
        ),
        (cpu, _) => bail!(
            "train.precision = \"{}\" needs a GPU backend (cuda, or wgpu for f16): the {} backend computes in f32 only; set train.precision = \"f32\" (--set train.precision=f32) or choose --backend cuda",
            precision.name(),
            cpu.name()
        ),
    }
}

/// The NVIDIA driver exposes these once a GPU is usable; checking them cannot crash, unlike
/// initializing a CUDA context on a machine without one.
fn nvidia_gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::path::Path::new("/dev/nvidia0").exists()
}

/// Work that is generic over the autodiff backend.
pub trait BackendTask {
    /// What the task returns ([`dispatch`] hands it back).
    type Output;
    /// `devices` holds at least one device; single-device work uses the first.
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, backend: BackendKind)
        -> Self::Output;
}

/// Runs `task` on the default device of the (resolved) backend `kind`.
pub fn dispatch<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    dispatch_on(kind, &[], task)
}

/// Runs `task` on the (resolved) backend `kind` with the devices named by `specs` (`--devices`:
/// `cpu` for flex and ndarray, `wgpu:N`/`wgpu:cpu`/`wgpu:default` for wgpu, `cuda:N` for
/// cuda); no specs means the backend's default device.
#[allow(unused_variables, unreachable_code)] // without any backend feature
pub fn dispatch_on<T: BackendTask>(
    kind: BackendKind,
    specs: &[String],
    task: T,
) -> Result<T::Output> {
    let kind = kind.resolve()?;
    #[allow(unreachable_patterns)]
    let out = match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => {
            let devices = parse_devices(kind, specs, "cpu", |s| {
                (s == "cpu").then_some(Default::default())
            })?;
            task.run::<burn::backend::Autodiff<burn::backend::Flex>>(devices, kind)
        }
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => {
            let devices = parse_devices(kind, specs, "cpu", |s| {
                (s == "cpu").then_some(Default::default())
            })?;
            task.run::<burn::backend::Autodiff<burn::backend::NdArray>>(devices, kind)
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::backend::wgpu::WgpuDevice;
            let devices =
                parse_devices(kind, specs, "wgpu:N, wgpu:cpu or wgpu:default", |s| match s
                    .strip_prefix("wgpu:")?
                {
                    "cpu" => Some(WgpuDevice::Cpu),
                    "default" => Some(WgpuDevice::DefaultDevice),
                    n => n.parse().ok().map(WgpuDevice::DiscreteGpu),
                })?;
            task.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(devices, kind)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::cuda::CudaDevice;
            let devices = parse_devices(kind, specs, "cuda:N", |s| {
                s.strip_prefix("cuda:")?.parse().ok().map(CudaDevice::new)
            })?;
            task.run::<burn::backend::Autodiff<burn::backend::Cuda>>(devices, kind)
        }
        _ => unreachable!("resolve() only returns compiled-in backends"),
    };
    Ok(out)
}

/// The devices `specs` name, or the default device when there are none.
#[allow(dead_code)]
fn parse_devices<D: Default>(
    kind: BackendKind,
    specs: &[String],
    form: &str,
    parse: impl Fn(&str) -> Option<D>,
) -> Result<Vec<D>> {
    if specs.is_empty() {
        return Ok(vec![D::default()]);
    }
    specs
        .iter()
        .map(|s| {
            parse(s.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--devices: '{s}' is not a {} device; write {form} (comma-separated, one per worker)",
                    kind.name()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown() {
        assert_eq!(
            "NdArray".parse::<BackendKind>().unwrap(),
            BackendKind::Ndarray
        );
        let e = "tpu".parse::<BackendKind>().unwrap_err().to_string();
        assert!(
            e.contains("unknown backend 'tpu'") && e.contains("flex"),
            "{e}"
        );
    }

    #[test]
    fn half_precision_is_refused_on_cpu_backends_and_bf16_on_wgpu() {
        for cpu in [BackendKind::Flex, BackendKind::Ndarray] {
            assert!(check_precision(cpu, Precision::F32).is_ok());
            let e = check_precision(cpu, Precision::Bf16)
                .unwrap_err()
                .to_string();
            assert!(e.contains("f32 only") && e.contains(cpu.name()), "{e}");
        }
        assert!(check_precision(BackendKind::Wgpu, Precision::F16).is_ok());
        assert!(check_precision(BackendKind::Wgpu, Precision::Bf16).is_err());
        assert!(check_precision(BackendKind::Cuda, Precision::Bf16).is_ok());
    }

    #[test]
    fn missing_backend_names_the_feature() {
        if !BackendKind::Cuda.compiled_in() {
            let e = BackendKind::Cuda.resolve().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
