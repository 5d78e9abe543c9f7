//! GPU memory of a run's device, as its backend's allocator reports it (for system metrics).
//!
//! burn's `Backend` trait has no memory query, but the CubeCL runtime under burn's wgpu and CUDA
//! backends does: the bytes its tensors occupy and the bytes its memory pools hold on the device
//! (PyTorch's `memory_allocated` and `memory_reserved`). The device type says which runtime it
//! is; CPU backends have no device memory apart from the process's own (its RSS).

use std::any::Any;

/// A device's memory as its allocator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes occupied by live tensors (padding excluded).
    pub in_use_bytes: u64,
    /// Bytes the allocator holds on the device (in use, padding and free pool space).
    pub reserved_bytes: u64,
}

/// A way to read `device`'s memory later; `None` for devices without memory of their own (the CPU
/// backends) or backends not compiled in.
pub fn device_memory_probe<D: Any + Clone + Send>(
    device: &D,
) -> Option<Box<dyn FnMut() -> Option<DeviceMemory> + Send>> {
    let any = device as &dyn Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        let client = <burn::backend::wgpu::WgpuRuntime as Runtime>::client(d);
        return Some(Box::new(move || client.memory_usage().ok().map(from_usage)));
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        let client = <burn_cubecl::cubecl::cuda::CudaRuntime as Runtime>::client(d);
        return Some(Box::new(move || client.memory_usage().ok().map(from_usage)));
    }
    let _ = any;
    None
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use burn_cubecl::cubecl::Runtime;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn from_usage(u: burn_cubecl::cubecl::MemoryUsage) -> DeviceMemory {
    DeviceMemory {
        in_use_bytes: u.bytes_in_use,
        reserved_bytes: u.bytes_reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory() {
        assert!(device_memory_probe(&"cpu".to_string()).is_none());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn a_wgpu_tensor_occupies_device_memory() {
        use burn::backend::wgpu::{Wgpu, WgpuDevice};
        use burn::tensor::Tensor;
        let device = WgpuDevice::default();
        let mut probe = device_memory_probe(&device).expect("wgpu devices have memory");
        let before = probe().expect("the allocator answers");
        let t = Tensor::<Wgpu, 1>::ones([1 << 20], &device);
        let _ = t.clone().sum().into_scalar();
        let after = probe().expect("the allocator answers");
        assert!(
            after.in_use_bytes >= before.in_use_bytes + (4 << 20),
            "{before:?} -> {after:?}"
        );
        assert!(after.reserved_bytes >= after.in_use_bytes, "{after:?}");
        drop(t);
    }
}
