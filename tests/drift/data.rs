//! Test data the drift tests shift: Fashion-MNIST images written back as IDX files, and table
//! rows written back as CSV.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Gray images of `height x width` pixels in 0..=255.
#[derive(Clone)]
pub struct Images {
    pub height: usize,
    pub width: usize,
    /// One `Vec` of `height * width` pixel values per image.
    pub pixels: Vec<Vec<f64>>,
}

impl Images {
    /// The Fashion-MNIST test images.
    pub fn fashion_test() -> Images {
        let path =
            super::common::repo_root().join("datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
        let (values, shape) = kiln_data::load_idx_images(&path).unwrap();
        let [_, height, width] = shape.as_slice().try_into().unwrap();
        let pixels = values
            .chunks_exact(height * width)
            .map(|img| img.iter().map(|&p| f64::from(p) * 255.0).collect())
            .collect();
        Images {
            height,
            width,
            pixels,
        }
    }

    /// `n` images drawn without replacement, by `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Images {
        let mut order: Vec<usize> = (0..self.pixels.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        Images {
            pixels: order[..n].iter().map(|&i| self.pixels[i].clone()).collect(),
            ..*self
        }
    }

    /// Every image through `f`.
    pub fn map(&self, f: impl Fn(&[f64]) -> Vec<f64>) -> Images {
        Images {
            pixels: self.pixels.iter().map(|img| f(img)).collect(),
            ..*self
        }
    }

    /// Writes an uncompressed IDX image file (pixels rounded and clipped to 0..=255).
    pub fn write(&self, path: &Path) {
        let mut bytes = Vec::with_capacity(16 + self.pixels.len() * self.height * self.width);
        for v in [
            0x803u32,
            self.pixels.len() as u32,
            self.height as u32,
            self.width as u32,
        ] {
            bytes.extend(v.to_be_bytes());
        }
        for img in &self.pixels {
            bytes.extend(img.iter().map(|p| p.round().clamp(0.0, 255.0) as u8));
        }
        std::fs::write(path, bytes).unwrap();
    }
}

/// A CSV table: its header and rows of cells.
#[derive(Clone)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads a CSV file without quoted cells.
    pub fn read(path: &Path) -> Table {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let split = |l: &str| {
            l.split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        };
        let header = split(lines.next().unwrap());
        Table {
            header,
            rows: lines.map(split).collect(),
        }
    }

    /// The rows shuffled by `seed`, cut into (the rest, the last `fraction`).
    pub fn split(&self, fraction: f64, seed: u64) -> (Table, Table) {
        let mut rows = self.rows.clone();
        rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let test = rows.split_off(rows.len() - (rows.len() as f64 * fraction).round() as usize);
        let table = |rows| Table {
            header: self.header.clone(),
            rows,
        };
        (table(rows), table(test))
    }

    /// A random half of the rows, by `seed`.
    pub fn half(&self, seed: u64) -> Table {
        let (_, half) = self.split(0.5, seed + 1000);
        half
    }

    fn column(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }

    /// Each cell of `column` through `f`.
    pub fn map_cells(&self, column: &str, f: impl Fn(&str) -> String) -> Table {
        let c = self.column(column);
        let mut t = self.clone();
        t.rows.iter_mut().for_each(|r| r[c] = f(&r[c]));
        t
    }

    /// Each number of `column` through `f` (missing values stay missing).
    pub fn map_numbers(&self, column: &str, f: impl Fn(f64) -> f64) -> Table {
        self.map_cells(column, |cell| match cell.parse::<f64>() {
            Ok(v) => format!("{}", f(v)),
            Err(_) => cell.to_string(),
        })
    }

    /// Writes the table as CSV.
    pub fn write(&self, path: &Path) {
        let mut text = self.header.join(",") + "\n";
        for r in &self.rows {
            text += &(r.join(",") + "\n");
        }
        std::fs::write(path, text).unwrap();
    }
}
