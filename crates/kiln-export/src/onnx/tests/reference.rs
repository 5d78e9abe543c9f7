//! Small deterministic networks, and a direct host forward pass: what Kiln computes with the
//! dequantized weights.

use super::*;

// ---- Small deterministic networks. ----

/// Deterministic values in about [-1, 1].
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub(super) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

pub(super) fn linear(r: &mut Lcg, d_in: usize, d_out: usize, scheme: Scheme, bias: bool) -> Layer {
    let w = r.vec(d_in * d_out, 1.0 / (d_in as f32).sqrt());
    Layer::Linear {
        weight: ExportTensor::quantize(&[d_in, d_out], &w, Some(1), scheme).unwrap(),
        bias: bias.then(|| r.vec(d_out, 0.3)),
    }
}

pub(super) fn conv(
    r: &mut Lcg,
    c_in: usize,
    c_out: usize,
    k: usize,
    padding: usize,
    scheme: Scheme,
) -> Layer {
    let w = r.vec(c_out * c_in * k * k, 1.0 / ((c_in * k * k) as f32).sqrt());
    Layer::Conv2d {
        weight: ExportTensor::quantize(&[c_out, c_in, k, k], &w, Some(0), scheme).unwrap(),
        bias: Some(r.vec(c_out, 0.2)),
        padding,
        stride: 1,
    }
}

pub(super) fn batch_norm(r: &mut Lcg, n: usize) -> Layer {
    Layer::BatchNorm {
        gamma: r.vec(n, 0.5).iter().map(|g| g + 1.0).collect(),
        beta: r.vec(n, 0.3),
        mean: r.vec(n, 0.3),
        var: r.vec(n, 0.4).iter().map(|v| v + 0.6).collect(),
        epsilon: 1e-5,
    }
}

/// An MLP over 6 features with every activation, a batch norm, a bias-free layer and one
/// weight quantized along axis 0; per-feature standardization.
pub(super) fn mlp(scheme: Scheme) -> ClassifierNet {
    let mut r = Lcg(7);
    // Blocks of an axis-0 int4 weight run along d_out = 4.
    let axis0 = {
        let w = r.vec(8 * 4, 0.4);
        Layer::Linear {
            weight: ExportTensor::quantize(&[8, 4], &w, Some(0), scheme).unwrap(),
            bias: Some(r.vec(4, 0.1)),
        }
    };
    ClassifierNet {
        features: 6,
        image: None,
        standardize: Some(Standardizer {
            mean: r.vec(6, 0.5),
            std: r.vec(6, 0.5).iter().map(|s| 1.0 / (s + 1.5)).collect(),
        }),
        layers: vec![
            linear(&mut r, 6, 8, scheme, true),
            Layer::Activation(Activation::Relu),
            linear(&mut r, 8, 8, scheme, false),
            batch_norm(&mut r, 8),
            Layer::Activation(Activation::Gelu),
            linear(&mut r, 8, 8, scheme, true),
            Layer::Activation(Activation::Tanh),
            axis0,
            Layer::Activation(Activation::Sigmoid),
            Layer::Flatten,
            linear(&mut r, 4, 3, scheme, true),
        ],
        classes: 3,
        regression: None,
    }
}

/// A CNN over 2x7x9 images: conv, batch norm, relu, max pool (odd edges), conv, gelu,
/// average pool, flatten, linear; one standardization value for all features.
pub(super) fn cnn(scheme: Scheme) -> ClassifierNet {
    let mut r = Lcg(11);
    ClassifierNet {
        features: 2 * 7 * 9,
        image: Some([2, 7, 9]),
        standardize: Some(Standardizer {
            mean: vec![0.4],
            std: vec![0.4],
        }),
        layers: vec![
            conv(&mut r, 2, 4, 3, 1, scheme),
            batch_norm(&mut r, 4),
            Layer::Activation(Activation::Relu),
            Layer::MaxPool2,
            conv(&mut r, 4, 6, 3, 1, scheme),
            Layer::Activation(Activation::Gelu),
            Layer::AvgPool2,
            Layer::Flatten,
            linear(&mut r, 12, 5, scheme, true),
        ],
        classes: 5,
        regression: None,
    }
}

// ---- A direct host forward pass: what Kiln computes with the dequantized weights. ----

/// `erf` to about 1e-7 (Abramowitz and Stegun 7.1.26 is not enough near 0 in relative
/// terms, so use the series there).
pub(super) fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // Maclaurin series: 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let (mut term, mut sum) = (x, x);
        for n in 1..60 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Continued fraction for erfc, ample at |x| >= 2.
        let z = x.abs();
        let mut f = 0.0;
        for k in (1..80).rev() {
            f = (k as f64 / 2.0) / (z + f);
        }
        let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f);
        (1.0 - erfc).copysign(x)
    }
}

/// One sample through `net`, in f64.
pub(super) fn forward(net: &ClassifierNet, input: &[f32]) -> Vec<f32> {
    let mut x: Vec<f64> = input.iter().map(|&v| f64::from(v)).collect();
    if let Some(st) = &net.standardize {
        let at = |v: &[f32], i: usize| f64::from(v[if v.len() == 1 { 0 } else { i }]);
        for (i, v) in x.iter_mut().enumerate() {
            *v = (*v - at(&st.mean, i)) / at(&st.std, i);
        }
    }
    let mut chw = net.image.map(|[c, h, w]| (c, h, w));
    for layer in &net.layers {
        match layer {
            Layer::Conv2d {
                weight,
                bias,
                padding,
                stride,
            } => {
                let (c, h, w) = chw.unwrap();
                let wt = weight.dequantize();
                let &[co, _, k, _] = weight.shape() else {
                    panic!()
                };
                let p = *padding as isize;
                let (oh, ow) = (
                    (h + 2 * padding - k) / stride + 1,
                    (w + 2 * padding - k) / stride + 1,
                );
                let mut y = vec![0.0; co * oh * ow];
                for o in 0..co {
                    for (yy, xx) in (0..oh).flat_map(|a| (0..ow).map(move |b| (a, b))) {
                        let mut s = bias.as_ref().map_or(0.0, |b| f64::from(b[o]));
                        for i in 0..c {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let (iy, ix) = (
                                        (yy * stride + dy) as isize - p,
                                        (xx * stride + dx) as isize - p,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let wv = wt[((o * c + i) * k + dy) * k + dx];
                                    s += f64::from(wv) * x[(i * h + iy as usize) * w + ix as usize];
                                }
                            }
                        }
                        y[(o * oh + yy) * ow + xx] = s;
                    }
                }
                x = y;
                chw = Some((co, oh, ow));
            }
            Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                epsilon,
            } => {
                let per = chw.map_or(1, |(_, h, w)| h * w);
                for (j, v) in x.iter_mut().enumerate() {
                    let ch = j / per;
                    let norm = (*v - f64::from(mean[ch])) / (f64::from(var[ch]) + epsilon).sqrt();
                    *v = norm * f64::from(gamma[ch]) + f64::from(beta[ch]);
                }
            }
            Layer::Activation(act) => {
                for v in &mut x {
                    *v = match act {
                        Activation::Relu => v.max(0.0),
                        Activation::Tanh => v.tanh(),
                        Activation::Sigmoid => 1.0 / (1.0 + (-*v).exp()),
                        Activation::Gelu => 0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2)),
                    };
                }
            }
            Layer::MaxPool2 | Layer::AvgPool2 => {
                let (c, h, w) = chw.unwrap();
                let (oh, ow) = (h / 2, w / 2);
                let mut y = Vec::with_capacity(c * oh * ow);
                for ch in 0..c {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let win = [(0, 0), (0, 1), (1, 0), (1, 1)]
                                .map(|(a, b)| x[(ch * h + 2 * yy + a) * w + 2 * xx + b]);
                            y.push(match layer {
                                Layer::MaxPool2 => win.into_iter().fold(f64::MIN, f64::max),
                                _ => win.iter().sum::<f64>() / 4.0,
                            });
                        }
                    }
                }
                x = y;
                chw = Some((c, oh, ow));
            }
            Layer::Flatten => chw = None,
            Layer::Residual { .. } | Layer::GlobalAvgPool => {
                panic!("the reference evaluates sequential networks only")
            }
            Layer::Linear { weight, bias } => {
                let wt = weight.dequantize();
                let &[d_in, d_out] = weight.shape() else {
                    panic!()
                };
                x = (0..d_out)
                    .map(|j| {
                        let b = bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
                        b + (0..d_in)
                            .map(|i| x[i] * f64::from(wt[i * d_out + j]))
                            .sum::<f64>()
                    })
                    .collect();
            }
        }
    }
    x.into_iter().map(|v| v as f32).collect()
}
