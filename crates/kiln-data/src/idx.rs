//! Reading (Fashion-)MNIST style IDX image and label files.
//!
//! An IDX file starts with a big-endian `u32` magic number whose first two
//! bytes are zero, whose third byte is the element type (`0x08` = `u8`, the
//! only one supported here) and whose fourth byte is the number of
//! dimensions; then comes one big-endian `u32` per dimension, then the
//! elements in row-major order.

use std::path::Path;

use anyhow::{bail, Result};

use crate::read::read_bytes;
use crate::Dataset;

/// IDX element type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// Reads an IDX images file (`u8`, dims `[n, rows, cols]`) and an IDX labels
/// file (`u8`, dims `[n]`), each gzip-compressed or raw.
///
/// Pixels become `f32` in `[0, 1]` (value / 255) and samples get the shape
/// `[1, rows, cols]`. Classes are named `"0"`, `"1"`, ... up to `num_classes`.
///
/// # Errors
/// A single-line message naming the file and the problem when a file cannot be
/// read, is not a `u8` IDX file of the right rank, is truncated, when the two
/// files hold different numbers of records, or when a label is `>= num_classes`.
pub fn load_idx(images: &Path, labels: &Path, num_classes: usize) -> Result<Dataset> {
    let image_file = IdxFile::read(images, IdxKind::Images)?;
    let label_file = IdxFile::read(labels, IdxKind::Labels)?;
    let (count, rows, cols) = (image_file.dims[0], image_file.dims[1], image_file.dims[2]);
    if label_file.dims[0] != count {
        bail!(
            "{} holds {count} images but {} holds {} labels; the two files must come from \
             the same split",
            images.display(),
            labels.display(),
            label_file.dims[0]
        );
    }
    let label_values = label_file.payload();
    if let Some((record, label)) = label_values
        .iter()
        .enumerate()
        .find(|&(_, &label)| usize::from(label) >= num_classes)
    {
        bail!(
            "{}: record {record} has label {label}, but labels must be in 0..{num_classes}; \
             check the number of classes or the label file",
            labels.display()
        );
    }
    tracing::debug!(
        images = %images.display(),
        count,
        rows,
        cols,
        "loaded IDX dataset"
    );
    Ok(Dataset {
        features: image_file
            .payload()
            .iter()
            .map(|&pixel| f32::from(pixel) / 255.0)
            .collect(),
        sample_shape: vec![1, rows, cols],
        labels: label_values.iter().map(|&label| u32::from(label)).collect(),
        num_classes,
        class_names: (0..num_classes).map(|c| c.to_string()).collect(),
        targets: Vec::new(),
    })
}

/// Reads an IDX images file alone (for prediction): pixels as `f32` in `[0, 1]` and the image
/// shape `[1, rows, cols]`.
///
/// # Errors
/// As [`load_idx`], for the images file.
pub fn load_idx_images(images: &Path) -> Result<(Vec<f32>, [usize; 3])> {
    let file = IdxFile::read(images, IdxKind::Images)?;
    let (rows, cols) = (file.dims[1], file.dims[2]);
    let pixels = file
        .payload()
        .iter()
        .map(|&pixel| f32::from(pixel) / 255.0)
        .collect();
    Ok((pixels, [1, rows, cols]))
}

/// Which of the two IDX file kinds is expected.
#[derive(Clone, Copy)]
enum IdxKind {
    Images,
    Labels,
}

impl IdxKind {
    /// Number of dimensions of this kind of file.
    fn rank(self) -> u8 {
        match self {
            IdxKind::Images => 3,
            IdxKind::Labels => 1,
        }
    }

    /// The magic number of this kind of file.
    fn magic(self) -> u32 {
        u32::from_be_bytes([0, 0, TYPE_U8, self.rank()])
    }

    /// The file kind in words, for error messages.
    fn name(self) -> &'static str {
        match self {
            IdxKind::Images => "images",
            IdxKind::Labels => "labels",
        }
    }

    /// What a header with these dimensions announces, e.g. `60000 images of 28x28`.
    fn describe(self, dims: &[usize]) -> String {
        match self {
            IdxKind::Images => format!("{} images of {}x{}", dims[0], dims[1], dims[2]),
            IdxKind::Labels => format!("{} labels", dims[0]),
        }
    }
}

/// A validated IDX file of `u8` elements held in memory.
struct IdxFile {
    /// The whole (decompressed) file.
    bytes: Vec<u8>,
    /// Length of the header; the elements follow it.
    header_len: usize,
    /// Dimensions from the header.
    dims: Vec<usize>,
}

impl IdxFile {
    /// Reads `path` and checks that it is a complete IDX file of `kind`.
    fn read(path: &Path, kind: IdxKind) -> Result<IdxFile> {
        let bytes = read_bytes(path)?;
        let shown = path.display();
        let rank = usize::from(kind.rank());
        let header_len = 4 + 4 * rank;
        if bytes.len() < 4 {
            bail!(
                "{shown}: truncated IDX file: {} bytes, too short for the magic number; \
                 the file is damaged, copy it again",
                bytes.len()
            );
        }
        let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if bytes[0] != 0 || bytes[1] != 0 {
            bail!(
                "{shown}: bad magic number 0x{magic:08x}, expected 0x{:08x} for IDX {}; \
                 this is not an IDX file (only raw or gzip-compressed IDX files are read)",
                kind.magic(),
                kind.name()
            );
        }
        if bytes[2] != TYPE_U8 {
            bail!(
                "{shown}: unsupported IDX element type 0x{:02x} ({}), only 0x08 (unsigned \
                 byte) is read; convert the file to u8 IDX",
                bytes[2],
                type_name(bytes[2])
            );
        }
        if usize::from(bytes[3]) != rank {
            bail!(
                "{shown}: IDX file has {} dimensions but IDX {} have {rank} (magic 0x{:08x}); \
                 check that the images and labels files are not swapped",
                bytes[3],
                kind.name(),
                kind.magic()
            );
        }
        if bytes.len() < header_len {
            bail!(
                "{shown}: truncated IDX file: the header needs {header_len} bytes but the file \
                 has only {}; the file is damaged, copy it again",
                bytes.len()
            );
        }
        let dims: Vec<usize> = bytes[4..header_len]
            .chunks_exact(4)
            .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
            .collect();
        let announced = kind.describe(&dims);
        let Some(payload_len) = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
            bail!(
                "{shown}: IDX header announces {announced}, which is too large to load; \
                 the file is damaged, copy it again"
            );
        };
        let actual = bytes.len() - header_len;
        if actual < payload_len {
            bail!(
                "{shown}: truncated IDX file: header says {announced} ({payload_len} bytes) but \
                 only {actual} bytes follow; the file is damaged, copy it again"
            );
        }
        if actual > payload_len {
            bail!(
                "{shown}: header says {announced} ({payload_len} bytes) but {actual} bytes \
                 follow; the file is damaged, copy it again"
            );
        }
        Ok(IdxFile {
            bytes,
            header_len,
            dims,
        })
    }

    /// The elements after the header.
    fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }
}

/// Name of an IDX element type code, for error messages.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "i16",
        0x0c => "i32",
        0x0d => "f32",
        0x0e => "f64",
        _ => "unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tests::gzip;
    use std::path::PathBuf;

    /// Encodes an IDX `u8` file with the given dimensions and elements.
    fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Three 2x2 images with pixels 0..12 and labels 2, 0, 1.
    fn sample_files() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..12).map(|p| p * 20).collect();
        (idx_bytes(&[3, 2, 2], &pixels), idx_bytes(&[3], &[2, 0, 1]))
    }

    /// Writes `images` and `labels` into a fresh temporary directory.
    fn write_pair(images: &[u8], labels: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("images-idx3-ubyte");
        let label_path = dir.path().join("labels-idx1-ubyte");
        std::fs::write(&image_path, images).unwrap();
        std::fs::write(&label_path, labels).unwrap();
        (dir, image_path, label_path)
    }

    /// The error message of loading `images` and `labels` with 3 classes.
    fn load_error(images: &[u8], labels: &[u8]) -> (String, PathBuf, PathBuf) {
        let (_dir, image_path, label_path) = write_pair(images, labels);
        let err = load_idx(&image_path, &label_path, 3)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        (err, image_path, label_path)
    }

    #[test]
    fn reads_images_and_labels() {
        let (images, labels) = sample_files();
        let (_dir, image_path, label_path) = write_pair(&images, &labels);
        let ds = load_idx(&image_path, &label_path, 3).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.sample_shape, vec![1, 2, 2]);
        assert_eq!(ds.labels, vec![2, 0, 1]);
        assert_eq!(ds.num_classes, 3);
        assert_eq!(ds.class_names, vec!["0", "1", "2"]);
        assert_eq!(
            ds.sample(1),
            &[80.0 / 255.0, 100.0 / 255.0, 120.0 / 255.0, 140.0 / 255.0]
        );
        assert!(ds.features.iter().all(|&x| (0.0..=1.0).contains(&x)));
    }

    #[test]
    fn gzip_and_raw_files_give_the_same_dataset() {
        let (images, labels) = sample_files();
        let (_raw_dir, raw_images, raw_labels) = write_pair(&images, &labels);
        let (_gz_dir, gz_images, gz_labels) = write_pair(&gzip(&images), &gzip(&labels));
        assert_eq!(
            load_idx(&raw_images, &raw_labels, 3).unwrap(),
            load_idx(&gz_images, &gz_labels, 3).unwrap()
        );
    }

    #[test]
    fn truncated_payload_is_reported() {
        let (images, labels) = sample_files();
        let (err, image_path, _) = load_error(&images[..images.len() - 5], &labels);
        assert_eq!(
            err,
            format!(
                "{}: truncated IDX file: header says 3 images of 2x2 (12 bytes) but only 7 \
                 bytes follow; the file is damaged, copy it again",
                image_path.display()
            )
        );
    }

    #[test]
    fn truncated_header_is_reported() {
        let (images, labels) = sample_files();
        let (err, _, label_path) = load_error(&images, &labels[..6]);
        assert!(
            err.starts_with(&format!("{}: truncated IDX file", label_path.display())),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let (mut images, labels) = sample_files();
        images.push(0);
        let (err, image_path, _) = load_error(&images, &labels);
        assert!(
            err.starts_with(&format!("{}: header says", image_path.display())),
            "{err}"
        );
        assert!(err.contains("13 bytes follow"), "{err}");
    }

    #[test]
    fn bad_magic_is_reported() {
        let (_, labels) = sample_files();
        let (err, image_path, _) = load_error(b"PK\x03\x04 not an idx file", &labels);
        assert!(
            err.starts_with(&format!(
                "{}: bad magic number 0x504b0304, expected 0x00000803 for IDX images",
                image_path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_code_is_reported() {
        let (mut images, labels) = sample_files();
        images[2] = 0x0d;
        let (err, image_path, _) = load_error(&images, &labels);
        assert!(
            err.starts_with(&format!(
                "{}: unsupported IDX element type 0x0d (f32)",
                image_path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn swapped_files_are_reported() {
        let (images, labels) = sample_files();
        let (err, image_path, _) = load_error(&labels, &images);
        assert!(
            err.starts_with(&format!(
                "{}: IDX file has 1 dimensions but IDX images have 3",
                image_path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let (images, _) = sample_files();
        let (err, image_path, label_path) = load_error(&images, &idx_bytes(&[2], &[0, 1]));
        assert_eq!(
            err,
            format!(
                "{} holds 3 images but {} holds 2 labels; the two files must come from the \
                 same split",
                image_path.display(),
                label_path.display()
            )
        );
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let (images, _) = sample_files();
        let (err, _, label_path) = load_error(&images, &idx_bytes(&[3], &[0, 1, 7]));
        assert_eq!(
            err,
            format!(
                "{}: record 2 has label 7, but labels must be in 0..3; check the number of \
                 classes or the label file",
                label_path.display()
            )
        );
    }
}
