//! Writes Fashion-MNIST (datasets/fashion-mnist, IDX files) as a folder of images, the layout in
//! which people keep their own pictures: `OUT/train/<class>/<n>.png` and `OUT/test/<class>/...`,
//! every other image a JPEG (quality 90), so that the folder mixes both formats.
//! configs/fashion-mnist-folder-cnn.toml trains on it.
//!
//!     cargo run --release --example image_folder -- datasets/fashion-mnist-folder
//!     cargo run --release --example image_folder -- OUT --train 2000 --test 500
//!
//! (`--train N`/`--test N`: only the first N images of each split.)

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::{GrayImage, ImageFormat};

/// Fashion-MNIST's classes, as folder names.
pub const CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// Writes the first `limit` images of the IDX pair `images`/`labels` into `out/<class>/`, the
/// odd-numbered ones as JPEG; returns how many it wrote.
pub fn write_split(
    images: &Path,
    labels: &Path,
    out: &Path,
    limit: Option<usize>,
) -> Result<usize> {
    let data = kiln_data::load_idx(images, labels, CLASSES.len())?;
    let &[_, h, w] = data.sample_shape.as_slice() else {
        bail!("{}: not a file of 2-d images", images.display());
    };
    let pixels = &data.features;
    let n = limit.unwrap_or(data.len()).min(data.len());
    for class in CLASSES {
        std::fs::create_dir_all(out.join(class))
            .with_context(|| format!("creating {}", out.join(class).display()))?;
    }
    for i in 0..n {
        let bytes: Vec<u8> = pixels[i * h * w..(i + 1) * h * w]
            .iter()
            .map(|&p| (p * 255.0).round() as u8)
            .collect();
        let img = GrayImage::from_raw(w as u32, h as u32, bytes).context("image size")?;
        let class = CLASSES[data.labels[i] as usize];
        if i % 2 == 1 {
            let path = out.join(class).join(format!("{i:05}.jpg"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            img.write_with_encoder(JpegEncoder::new_with_quality(file, 90))?;
        } else {
            let path = out.join(class).join(format!("{i:05}.png"));
            img.save_with_format(&path, ImageFormat::Png)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(n)
}

/// Writes both splits of Fashion-MNIST under `out` (`train/`, `test/`).
pub fn write_fashion_mnist(out: &Path, train: Option<usize>, test: Option<usize>) -> Result<()> {
    let root = Path::new("datasets/fashion-mnist");
    for (split, prefix, limit) in [("train", "train", train), ("test", "t10k", test)] {
        let n = write_split(
            &root.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &root.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &out.join(split),
            limit,
        )?;
        println!("{}: {n} images", out.join(split).display());
    }
    Ok(())
}

#[allow(dead_code)] // tests/images.rs includes this file for write_split
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = None;
    let (mut train, mut test) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut count = |flag: &str| -> Result<Option<usize>> {
            let v = it
                .next()
                .with_context(|| format!("{flag} needs a number"))?;
            Ok(Some(
                v.parse()
                    .with_context(|| format!("{flag} {v}: not a number"))?,
            ))
        };
        match a.as_str() {
            "--train" => train = count("--train")?,
            "--test" => test = count("--test")?,
            other if out.is_none() => out = Some(other.to_string()),
            other => {
                bail!("unexpected argument {other}; usage: image_folder OUT [--train N] [--test N]")
            }
        }
    }
    let out = out.context("usage: image_folder OUT [--train N] [--test N]")?;
    write_fashion_mnist(Path::new(&out), train, test)
}
