//! Folders of images (`data.format = "image_folder"`): `ROOT/<class>/*.{png,jpg,jpeg}`, or
//! `ROOT/train/<class>/...` with optional `valid/` and `test/` beside it. Hidden files and
//! folders (a leading `.`) are ignored, and so are files of other types.
//!
//! Nothing is decoded up front: an [`ImageSet`] is a list of files that the loader's threads
//! decode batch by batch ([`Gather`]), so a folder larger than memory trains in the memory of
//! the batches in flight. A file becomes a sample as [`ImageSpec`] says: decoded with the
//! `image` crate, turned upright by its EXIF orientation, resized (bilinear) when the run sets
//! `data.image_size`, converted to the model's channels (luma or RGB), scaled to [0, 1] and
//! laid out `[channels, height, width]`. Training samples may then be augmented (a random crop
//! of the zero-padded image, a horizontal flip) with randomness drawn from (seed, epoch,
//! index), so a resumed run augments exactly as an uninterrupted one; the standardization comes
//! last.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::source::Gather;
use crate::{Batch, Standardizer};

#[cfg(test)]
mod tests;

/// File extensions read as images (compared without case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Whether `path` names an image file Kiln reads (by its extension).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// An image file and its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// The file.
    pub path: PathBuf,
    /// Its class index (the position of its folder's name among the classes).
    pub class: u32,
}

/// A folder of class folders, listed: the classes and the files of each sub-root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFolder {
    /// The class names (the training class folders' names, sorted).
    pub classes: Vec<String>,
    /// The training images (`ROOT/<class>` or `ROOT/train/<class>`).
    pub train: Vec<ImageFile>,
    /// `ROOT/valid/<class>`, if there is such a folder.
    pub valid: Option<Vec<ImageFile>>,
    /// `ROOT/test/<class>`, if there is such a folder.
    pub test: Option<Vec<ImageFile>>,
}

impl ImageFolder {
    /// Lists `root` (see the module docs).
    ///
    /// # Errors
    /// One line naming the folder: `root` is not a folder, has no class folders, a class folder
    /// holds no image, `valid/` or `test/` without `train/`, or a class of `valid/` or `test/`
    /// that `train/` does not have.
    pub fn scan(root: &Path) -> Result<ImageFolder> {
        if !root.is_dir() {
            bail!(
                "{}: not a folder; an image folder holds one folder of images per class \
                 (ROOT/<class>/*.png|jpg), or train/, valid/ and test/ folders of them",
                root.display()
            );
        }
        let sub = |name: &str| Some(root.join(name)).filter(|p| p.is_dir());
        let (train, valid, test) = (sub("train"), sub("valid"), sub("test"));
        let Some(train_root) = train else {
            if let Some(other) = valid.as_ref().or(test.as_ref()) {
                bail!(
                    "{}: there is {} but no train/ beside it; put the training images in {}",
                    root.display(),
                    other.display(),
                    root.join("train").display()
                );
            }
            let (classes, train) = scan_classes(root, None)?;
            return Ok(ImageFolder {
                classes,
                train,
                valid: None,
                test: None,
            });
        };
        let (classes, train) = scan_classes(&train_root, None)?;
        let held = |dir: Option<PathBuf>| -> Result<Option<Vec<ImageFile>>> {
            dir.map(|d| Ok(scan_classes(&d, Some(&classes))?.1))
                .transpose()
        };
        Ok(ImageFolder {
            valid: held(valid)?,
            test: held(test)?,
            classes,
            train,
        })
    }
}

/// The visible entries of `dir`, sorted by name.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

/// The class folders of `dir` and their images. With `known` classes (of the training
/// folder), every class folder must be one of them and takes its index there.
fn scan_classes(dir: &Path, known: Option<&[String]>) -> Result<(Vec<String>, Vec<ImageFile>)> {
    let folders: Vec<PathBuf> = (visible_entries(dir)?.into_iter())
        .filter(|p| p.is_dir())
        .collect();
    if folders.is_empty() {
        bail!(
            "{}: no class folders; put each class's images in a folder named after the class \
             ({}/<class>/*.png|jpg)",
            dir.display(),
            dir.display()
        );
    }
    let names: Vec<String> = (folders.iter())
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut files = Vec::new();
    let mut others = 0;
    for (folder, name) in folders.iter().zip(&names) {
        let class = match known {
            None => names.iter().position(|n| n == name),
            Some(classes) => classes.iter().position(|n| n == name),
        }
        .ok_or_else(|| {
            anyhow!(
                "{}: class `{name}` is not one of the training classes ({}); remove the folder \
                 or add it to the training images",
                folder.display(),
                known.unwrap_or_default().join(", ")
            )
        })?;
        let before = files.len();
        for path in visible_entries(folder)? {
            if path.is_file() && is_image_file(&path) {
                files.push(ImageFile {
                    path,
                    class: class as u32,
                });
            } else {
                others += 1;
            }
        }
        if files.len() == before {
            bail!(
                "{}: class folder `{name}` holds no image (.png, .jpg, .jpeg); add images or \
                 remove the folder",
                folder.display()
            );
        }
    }
    if others > 0 {
        tracing::warn!(
            "{}: ignored {others} entries that are not .png, .jpg or .jpeg files",
            dir.display()
        );
    }
    Ok((known.map_or(names, <[String]>::to_vec), files))
}

/// How an image file becomes a sample of `[channels, height, width]` values in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// 1 (luma) or 3 (RGB).
    pub channels: usize,
    /// Rows of a sample.
    pub height: usize,
    /// Columns of a sample.
    pub width: usize,
    /// Whether an image of another size is resized (bilinear) to `height x width`; if not, it
    /// is an error.
    pub resize: bool,
}

impl ImageSpec {
    /// The spec of a run: `size` (`data.image_size`, `[height, width]`) resizes every image to
    /// it, else every image must have the size of `first`; `channels` (`data.channels`) is 1 or
    /// 3, else that of `first` (1 for a grayscale image, 3 for any other).
    pub fn decide(first: &Path, size: Option<[usize; 2]>, channels: Option<usize>) -> Result<Self> {
        let image = open(first)?;
        let channels = channels.unwrap_or(match image.color().channel_count() {
            1 | 2 => 1,
            _ => 3,
        });
        let [height, width] = size.unwrap_or([image.height() as usize, image.width() as usize]);
        Ok(ImageSpec {
            channels,
            height,
            width,
            resize: size.is_some(),
        })
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[channels, height, width]`.
    pub fn sample_shape(&self) -> Vec<usize> {
        vec![self.channels, self.height, self.width]
    }

    /// Reads the image file `path` as a sample (see [`ImageSpec::decode`]).
    pub fn read(&self, path: &Path, size_hint: &str) -> Result<Vec<f32>> {
        self.decode(open(path)?, path, size_hint)
    }

    /// The upright image as a sample: resized or checked, converted to the channels, scaled
    /// to [0, 1]. `size_hint` says what to do about an image of the wrong size.
    pub fn decode(&self, image: DynamicImage, path: &Path, size_hint: &str) -> Result<Vec<f32>> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let image = if (h, w) == (self.height, self.width) {
            image
        } else if self.resize {
            image.resize_exact(self.width as u32, self.height as u32, FilterType::Triangle)
        } else {
            bail!(
                "{}: the image is {w}x{h} (width x height), not {}x{}; {size_hint}",
                path.display(),
                self.width,
                self.height
            );
        };
        let bytes = match self.channels {
            1 => image.to_luma8().into_raw(),
            _ => image.to_rgb8().into_raw(),
        };
        // Interleaved (h, w, c) bytes to planar [c, h, w] values in [0, 1].
        let (c, plane) = (self.channels, self.height * self.width);
        let mut out = vec![0.0; c * plane];
        for (i, px) in bytes.chunks_exact(c).enumerate() {
            for (k, &v) in px.iter().enumerate() {
                out[k * plane + i] = f32::from(v) / 255.0;
            }
        }
        Ok(out)
    }
}

/// Decodes the image file `path`, turned upright by its EXIF orientation.
///
/// # Errors
/// One line naming the file: it cannot be read, is not an image, or is damaged (a truncated
/// JPEG).
pub fn open(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{}: cannot decode the image ({e}); replace or remove the file (a training run \
             skips unreadable images with data.skip_bad_images = true)",
            path.display()
        )
    };
    let reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| bad(&e))?;
    // The JPEG decoder fills in what a truncated file lacks with gray; refuse it instead.
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(bad(
            &"the file ends before the image data does: it is truncated",
        ));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(&e))?;
    let orientation = decoder.orientation().map_err(|e| bad(&e))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Whether a JPEG's last scan is followed by the end-of-image marker (`FF D9`). Inside a
/// scan's data an `FF` byte is only ever followed by `00` or a restart marker, so the last
/// `FF DA` (start of scan) and `FF D9` of the file are real markers; an embedded thumbnail's
/// markers come before the main image's.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Training-time augmentation, off unless configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// `data.crop_padding`: pad the image with this many zero pixels on every side and crop a
    /// random window of its size (0: no crop).
    pub crop_padding: usize,
    /// `data.flip`: mirror the image left to right with probability 1/2.
    pub flip: bool,
    /// The run's seed.
    pub seed: u64,
}

impl Augment {
    /// Augments `sample` (`[c, h, w]`, unstandardized), sample `index` of the split in `epoch`:
    /// the same (seed, epoch, index) always gives the same crop and flip.
    pub fn apply(&self, sample: &mut [f32], spec: &ImageSpec, epoch: usize, index: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xA0C3_17E5);
        rng.set_stream(((epoch as u64) << 32) ^ index as u64);
        let p = self.crop_padding as i64;
        let (dy, dx) = if p > 0 {
            let mut offset = || rng.random_range(-p..=p) as isize;
            (offset(), offset())
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.random_bool(0.5);
        if (dy, dx, flip) == (0, 0, false) {
            return;
        }
        let (h, w) = (spec.height as isize, spec.width as isize);
        let plane = (h * w) as usize;
        let mut out = vec![0.0; sample.len()];
        for c in 0..spec.channels {
            let (src, dst) = (
                &sample[c * plane..][..plane],
                &mut out[c * plane..][..plane],
            );
            for y in 0..h {
                let sy = y + dy;
                if !(0..h).contains(&sy) {
                    continue;
                }
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } + dx;
                    if (0..w).contains(&sx) {
                        dst[(y * w + x) as usize] = src[(sy * w + sx) as usize];
                    }
                }
            }
        }
        sample.copy_from_slice(&out);
    }
}

/// A split of an image folder: its files, decoded batch by batch on the loader's threads.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// The files, in split order.
    pub files: Vec<ImageFile>,
    /// How a file becomes a sample.
    pub spec: ImageSpec,
    /// The class names.
    pub classes: Arc<Vec<String>>,
    /// Applied to every sample last (per channel, written out per value).
    pub standardizer: Option<Standardizer>,
    /// Applied to training batches ([`Gather::gather_in_epoch`]) only.
    pub augment: Option<Augment>,
}

/// What to do about an image of another size while training.
pub const TRAIN_SIZE_HINT: &str =
    "set data.image_size = [height, width] to resize every image to one size";

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The images `indices` as a batch; augmented as sample `index` of `epoch` if given.
    fn batch(&self, indices: &[usize], epoch: Option<usize>) -> Result<Batch> {
        let mut x = Vec::with_capacity(indices.len() * self.spec.sample_len());
        for &i in indices {
            let mut sample = self.spec.read(&self.files[i].path, TRAIN_SIZE_HINT)?;
            if let (Some(augment), Some(epoch)) = (&self.augment, epoch) {
                augment.apply(&mut sample, &self.spec, epoch, i);
            }
            x.extend_from_slice(&sample);
        }
        if let Some(st) = &self.standardizer {
            st.apply_rows(&mut x, self.spec.sample_len());
        }
        let mut x_shape = vec![indices.len()];
        x_shape.extend(self.spec.sample_shape());
        Ok(Batch {
            x,
            x_shape,
            y: indices
                .iter()
                .map(|&i| i64::from(self.files[i].class))
                .collect(),
            targets: Vec::new(),
        })
    }

    /// Per-channel mean and standard deviation of up to `max` images of the split, evenly
    /// spaced (all of them when there are fewer), decoded on `threads` threads; written out
    /// per value of a sample, as [`Standardizer::apply_rows`] takes it.
    pub fn channel_statistics(&self, max: usize, threads: usize) -> Result<Standardizer> {
        let n = self.len();
        let take = max.min(n).max(1);
        let picked: Vec<usize> = (0..take).map(|i| i * n / take).collect();
        let sums = decode_parallel(self, &picked, threads, |sample, sums: &mut Vec<f64>| {
            let plane = self.spec.height * self.spec.width;
            for (c, values) in sample.chunks_exact(plane).enumerate() {
                sums[2 * c] += values.iter().map(|&v| f64::from(v)).sum::<f64>();
                sums[2 * c + 1] += values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            }
        })?;
        let count = (take * self.spec.height * self.spec.width) as f64;
        let plane = self.spec.height * self.spec.width;
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for c in 0..self.spec.channels {
            let m = sums[2 * c] / count;
            let var = (sums[2 * c + 1] / count - m * m).max(0.0);
            // A constant channel is left unscaled (as a constant table column is).
            let s = if var > 0.0 { var.sqrt() } else { 1.0 };
            mean.extend(std::iter::repeat_n(m as f32, plane));
            std.extend(std::iter::repeat_n(s as f32, plane));
        }
        Ok(Standardizer { mean, std })
    }
}

/// Decodes the images `picked` of `set` on up to `threads` threads, folding each sample into
/// per-thread sums (two per channel) that are then added up; the first error stops it.
fn decode_parallel(
    set: &ImageSet,
    picked: &[usize],
    threads: usize,
    fold: impl Fn(&[f32], &mut Vec<f64>) + Sync,
) -> Result<Vec<f64>> {
    let chunk = picked.len().div_ceil(threads.max(1)).max(1);
    let width = 2 * set.spec.channels;
    let partial: Vec<Result<Vec<f64>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = picked
            .chunks(chunk)
            .map(|part| {
                let fold = &fold;
                scope.spawn(move || {
                    let mut sums = vec![0.0; width];
                    for &i in part {
                        let sample = set.spec.read(&set.files[i].path, TRAIN_SIZE_HINT)?;
                        fold(&sample, &mut sums);
                    }
                    Ok(sums)
                })
            })
            .collect();
        (handles.into_iter())
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("an image decoder thread panicked")))
            })
            .collect()
    });
    let mut total = vec![0.0; width];
    for sums in partial {
        for (t, s) in total.iter_mut().zip(sums?) {
            *t += s;
        }
    }
    Ok(total)
}

/// Leaves out of `files` the images that cannot be read as `spec` says, on up to `threads`
/// threads; returns them with their errors (`data.skip_bad_images = true`).
pub fn drop_unreadable(
    files: &mut Vec<ImageFile>,
    spec: &ImageSpec,
    threads: usize,
) -> Vec<(PathBuf, String)> {
    let chunk = files.len().div_ceil(threads.max(1)).max(1);
    let bad: Vec<Vec<(usize, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (files.chunks(chunk).enumerate())
            .map(|(k, part)| {
                scope.spawn(move || {
                    (part.iter().enumerate())
                        .filter_map(|(i, f)| {
                            let e = spec.read(&f.path, TRAIN_SIZE_HINT).err()?;
                            Some((k * chunk + i, format!("{e:#}")))
                        })
                        .collect()
                })
            })
            .collect();
        (handles.into_iter())
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let bad: Vec<(usize, String)> = bad.into_iter().flatten().collect();
    let dropped = bad
        .iter()
        .map(|(i, e)| (files[*i].path.clone(), e.clone()))
        .collect();
    let bad: std::collections::HashSet<usize> = bad.into_iter().map(|(i, _)| i).collect();
    let mut index = 0;
    files.retain(|_| {
        index += 1;
        !bad.contains(&(index - 1))
    });
    dropped
}

impl Gather for ImageSet {
    type Batch = Batch;

    fn len(&self) -> usize {
        ImageSet::len(self)
    }

    fn gather(&self, indices: &[usize]) -> Result<Batch> {
        self.batch(indices, None)
    }

    fn gather_in_epoch(&self, indices: &[usize], epoch: usize) -> Result<Batch> {
        self.batch(indices, Some(epoch))
    }
}
