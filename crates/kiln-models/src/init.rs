//! Parameter initialization on the host, from the run's seed.
//!
//! Every backend draws random numbers differently, so burn's own initializers would give each
//! backend different starting weights for the same seed. Kiln draws the initial values on the host
//! with a portable generator (ChaCha8) instead: the same seed gives bit-identical initial weights on
//! flex, ndarray, wgpu and CUDA. The distributions are PyTorch's defaults for the same layers
//! (uniform in ±1/sqrt(fan_in) for weights and biases), so results compare with PyTorch's.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded source of initial parameter values.
pub struct HostInit {
    rng: ChaCha8Rng,
}

impl HostInit {
    /// A source whose values depend only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `n` values uniform in [-bound, bound).
    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect()
    }

    /// `n` values from a normal distribution with mean 0 and standard deviation `std`
    /// (Box-Muller on the seeded stream, so identical on every platform).
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // u1 in (0, 1] keeps ln(u1) finite.
            let u1: f64 = 1.0 - self.rng.random::<f64>();
            let u2: f64 = self.rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32 * std);
            out.push((r * theta.sin()) as f32 * std);
        }
        out.truncate(n);
        out
    }

    /// A tensor of normal values with standard deviation `std`.
    pub fn normal_tensor<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        std: f32,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.normal(n, std), shape), device)
    }

    /// A linear layer `d_in -> d_out` initialized the GPT-2 way: weights normal with
    /// standard deviation `std`, biases (if any) zero.
    pub fn linear_normal<B: Backend>(
        &mut self,
        d_in: usize,
        d_out: usize,
        std: f32,
        bias: bool,
        device: &B::Device,
    ) -> Linear<B> {
        let mut layer = LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .with_initializer(Initializer::Zeros)
            .init(device);
        layer.weight = Param::from_tensor(self.normal_tensor([d_in, d_out], std, device));
        layer
    }

    /// A tensor of `shape` with values uniform in `[-bound, bound]`, on `device`.
    pub fn uniform_tensor<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f32,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.uniform(n, bound), shape), device)
    }

    /// A linear layer `d_in -> d_out` with bias.
    pub fn linear<B: Backend>(
        &mut self,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Linear<B> {
        let mut layer = LinearConfig::new(d_in, d_out)
            .with_initializer(Initializer::Zeros)
            .init(device);
        let bound = 1.0 / (d_in as f32).sqrt();
        layer.weight = Param::from_tensor(self.uniform_tensor([d_in, d_out], bound, device));
        layer.bias = Some(Param::from_tensor(self.uniform_tensor(
            [d_out],
            bound,
            device,
        )));
        layer
    }

    /// A 2-d convolution with square kernels, stride 1 and bias.
    pub fn conv2d<B: Backend>(
        &mut self,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        device: &B::Device,
    ) -> Conv2d<B> {
        let mut layer = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_initializer(Initializer::Zeros)
            .init(device);
        let bound = 1.0 / ((c_in * kernel * kernel) as f32).sqrt();
        layer.weight =
            Param::from_tensor(self.uniform_tensor([c_out, c_in, kernel, kernel], bound, device));
        layer.bias = Some(Param::from_tensor(self.uniform_tensor(
            [c_out],
            bound,
            device,
        )));
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn same_seed_same_weights_and_pytorch_bounds() {
        let device = Default::default();
        let a: Linear<Flex> = HostInit::new(7).linear(100, 3, &device);
        let b: Linear<Flex> = HostInit::new(7).linear(100, 3, &device);
        let c: Linear<Flex> = HostInit::new(8).linear(100, 3, &device);
        let wa = a.weight.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(wa, b.weight.val().into_data().to_vec::<f32>().unwrap());
        assert_ne!(wa, c.weight.val().into_data().to_vec::<f32>().unwrap());
        assert!(wa.iter().all(|w| w.abs() <= 0.1));
        assert!(wa.iter().any(|w| w.abs() > 0.05));
    }

    #[test]
    fn normal_values_have_the_requested_spread() {
        let v = HostInit::new(3).normal(20_001, 0.02);
        assert_eq!(v.len(), 20_001);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.0005, "std {}", var.sqrt());
    }
}
