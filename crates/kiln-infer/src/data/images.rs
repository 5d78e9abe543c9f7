//! A folder of images (`data.format = "image_folder"`) as a run's three splits: `train/`,
//! `valid/` and `test/` sub-roots where the folder has them, else images held out class by
//! class (`data.test_fraction`, then `data.valid_fraction`; `data.stratify = false` draws them
//! from all images). The sample spec comes from the config and the first training image, the
//! per-channel standardization from (up to [`STATISTICS_IMAGES`] of) the training images.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use kiln_core::config::DataSection;
use kiln_data::images::drop_unreadable;
use kiln_data::{
    split_indices, stratified_split_indices, Augment, ImageFile, ImageFolder, ImageSet, ImageSpec,
    Standardizer,
};

/// Training images the per-channel statistics are taken over (evenly spaced; all of a smaller
/// split): enough for their first three digits, without decoding a large folder at start.
pub const STATISTICS_IMAGES: usize = 5000;

/// The three splits of an image folder and the standardization inside them.
pub(super) struct ImageSplits {
    pub train: ImageSet,
    pub valid: ImageSet,
    pub test: ImageSet,
    pub standardizer: Option<Standardizer>,
}

/// Lists `root` and splits it (see the module docs).
pub(super) fn load(d: &DataSection, root: &Path, seed: u64) -> Result<ImageSplits> {
    let mut folder = ImageFolder::scan(root).map_err(|e| anyhow!("data.path: {e:#}"))?;
    let spec = ImageSpec::decide(&folder.train[0].path, d.image_size, d.channels)
        .map_err(|e| anyhow!("data.path: {e:#}"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if d.skip_bad_images == Some(true) {
        let mut skipped = Vec::new();
        for files in std::iter::once(&mut folder.train)
            .chain(folder.valid.as_mut())
            .chain(folder.test.as_mut())
        {
            skipped.extend(drop_unreadable(files, &spec, threads));
        }
        if let Some((path, error)) = skipped.first() {
            tracing::warn!(
                "data.skip_bad_images: skipped {} unreadable image(s), the first {}: {error}",
                skipped.len(),
                path.display()
            );
        }
    }
    let stratify = d.stratify.unwrap_or(true);
    let split = |files: Vec<ImageFile>, fraction: f64, seed: u64| {
        let (rest, held) = if stratify {
            let classes: Vec<u32> = files.iter().map(|f| f.class).collect();
            stratified_split_indices(&classes, fraction, seed)
        } else {
            split_indices(files.len(), fraction, seed)
        };
        let pick = |ids: Vec<usize>| ids.into_iter().map(|i| files[i].clone()).collect();
        (pick(rest), pick(held))
    };
    // As for tables: the test images are drawn with their own stream, so that changing
    // valid_fraction never moves an image in or out of the test split.
    let (train_full, test) = match folder.test.take() {
        Some(test) => (std::mem::take(&mut folder.train), test),
        None => split(
            std::mem::take(&mut folder.train),
            d.test_fraction,
            seed ^ 0x7E57,
        ),
    };
    let (train, valid) = match folder.valid.take() {
        Some(valid) => (train_full, valid),
        None => split(train_full, d.valid_fraction, seed),
    };
    let classes = Arc::new(folder.classes);
    let set = |files: Vec<ImageFile>| ImageSet {
        files,
        spec,
        classes: classes.clone(),
        standardizer: None,
        augment: None,
    };
    let (mut train, mut valid, mut test) = (set(train), set(valid), set(test));
    if train.is_empty() {
        return Err(anyhow!(
            "data.path {}: no training images left after holding out the test and validation \
             splits; add images or lower data.test_fraction / data.valid_fraction",
            root.display()
        ));
    }
    let standardizer = if d.standardize {
        Some(train.channel_statistics(STATISTICS_IMAGES, threads)?)
    } else {
        None
    };
    for s in [&mut train, &mut valid, &mut test] {
        s.standardizer = standardizer.clone();
    }
    let (crop_padding, flip) = (d.crop_padding.unwrap_or(0), d.flip.unwrap_or(false));
    if crop_padding > 0 || flip {
        train.augment = Some(Augment {
            crop_padding,
            flip,
            seed,
        });
    }
    Ok(ImageSplits {
        train,
        valid,
        test,
        standardizer,
    })
}
