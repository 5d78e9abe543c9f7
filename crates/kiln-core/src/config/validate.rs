//! Validation: the ranges and combinations of values that the types alone cannot express. Each
//! error names the key (`data.batch_size: must be at least 1`).

use anyhow::{bail, Result};

use super::{Config, DataFormat, OptimizerKind, ScheduleKind};

impl Config {
    /// Checks values that types alone cannot: ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        check(!self.run.name.is_empty(), "run.name", "must not be empty")?;
        check(
            !self.run.name.contains(['/', '\\']) && self.run.name != "." && self.run.name != "..",
            "run.name",
            "must be a plain directory name (no slashes)",
        )?;
        check(d.batch_size > 0, "data.batch_size", "must be at least 1")?;
        check(
            self.distributed.timeout_secs >= 1.0 && self.distributed.timeout_secs.is_finite(),
            "distributed.timeout_secs",
            "must be at least 1 (seconds)",
        )?;
        if let Some((key, why)) = self.finetune.as_ref().and_then(|f| f.problem()) {
            check(false, key, &why)?;
        }
        let t = &self.tracking;
        check(
            t.exit_timeout_secs >= 0.0 && t.exit_timeout_secs.is_finite(),
            "tracking.exit_timeout_secs",
            "must be at least 0 (seconds)",
        )?;
        for (key, switch) in [
            ("tracking.tensorboard", &t.tensorboard),
            ("tracking.mlflow", &t.mlflow),
        ] {
            check(
                switch.place() != Some(""),
                key,
                "must be true, false or a non-empty place (a directory or a URI)",
            )?;
        }
        if let Some(b) = d.eval_batch_size {
            check(b > 0, "data.eval_batch_size", "must be at least 1")?;
        }
        check(
            d.loader_threads > 0,
            "data.loader_threads",
            "must be at least 1",
        )?;
        check(d.prefetch > 0, "data.prefetch", "must be at least 1")?;
        check(
            (0.0..1.0).contains(&d.valid_fraction),
            "data.valid_fraction",
            "must be in [0, 1)",
        )?;
        match d.format {
            // Checked below, with the keys of image folders.
            None | Some(DataFormat::ImageFolder) => {}
            Some(DataFormat::Idx) => {
                for (key, v) in [
                    ("data.train_images", &d.train_images),
                    ("data.train_labels", &d.train_labels),
                    ("data.test_images", &d.test_images),
                    ("data.test_labels", &d.test_labels),
                ] {
                    check(v.is_some(), key, "is required when data.format = \"idx\"")?;
                }
                check(d.num_classes >= 2, "data.num_classes", "must be at least 2")?;
            }
            Some(DataFormat::Text | DataFormat::Tokens) => {
                check(
                    d.path.is_some(),
                    "data.path",
                    "is required when data.format = \"text\" or \"tokens\"",
                )?;
            }
            Some(DataFormat::Csv) => {
                check(
                    d.path.is_some(),
                    "data.path",
                    "is required when data.format = \"csv\"",
                )?;
                check(
                    d.test_fraction > 0.0 && d.test_fraction < 1.0,
                    "data.test_fraction",
                    "must be in (0, 1)",
                )?;
                if let Some(delimiter) = &d.delimiter {
                    check(
                        delimiter.chars().count() == 1 && delimiter.is_ascii(),
                        "data.delimiter",
                        "must be one ASCII character, such as \",\", \";\" or \"\\t\"",
                    )?;
                }
            }
        }
        if d.format == Some(DataFormat::ImageFolder) {
            check(
                d.path.is_some(),
                "data.path",
                "is required when data.format = \"image_folder\" (the folder of class folders)",
            )?;
            if let Some([h, w]) = d.image_size {
                check(
                    h > 0 && w > 0,
                    "data.image_size",
                    "must be [height, width], both at least 1",
                )?;
            }
            if let Some(c) = d.channels {
                check(
                    c == 1 || c == 3,
                    "data.channels",
                    "must be 1 (grayscale) or 3 (RGB)",
                )?;
            }
            check(
                d.test_fraction > 0.0 && d.test_fraction < 1.0,
                "data.test_fraction",
                "must be in (0, 1)",
            )?;
        } else {
            for (key, set) in [
                ("data.image_size", d.image_size.is_some()),
                ("data.channels", d.channels.is_some()),
                ("data.crop_padding", d.crop_padding.is_some()),
                ("data.flip", d.flip.is_some()),
                ("data.skip_bad_images", d.skip_bad_images.is_some()),
            ] {
                check(
                    !set,
                    key,
                    "applies to image folders only (data.format = \"image_folder\")",
                )?;
            }
        }
        if !matches!(d.format, Some(DataFormat::Csv | DataFormat::ImageFolder)) {
            check(
                d.stratify.is_none(),
                "data.stratify",
                "applies to tables and image folders only",
            )?;
            check(
                d.test_path.is_none(),
                "data.test_path",
                "applies to tables only (data.format = \"csv\")",
            )?;
        }
        if d.format != Some(DataFormat::Csv) {
            for (key, set) in [
                ("data.delimiter", d.delimiter.is_some()),
                ("data.label", d.label.is_some()),
                ("data.features", d.features.is_some()),
                ("data.categorical", d.categorical.is_some()),
                ("data.missing", d.missing.is_some()),
                ("data.task", d.task.is_some()),
            ] {
                check(!set, key, "applies to tables only (data.format = \"csv\")")?;
            }
        }
        if d.format != Some(DataFormat::Text) {
            check(
                d.tokenizer.is_none(),
                "data.tokenizer",
                "applies to text only (data.format = \"text\"); a token file carries its tokenizer in its sidecar (kiln tokenize --tokenizer)",
            )?;
        }
        if d.is_regression() {
            check(
                d.stratify != Some(true),
                "data.stratify",
                "stratifies by class; a regression (data.task = \"regression\") has no classes: remove the key",
            )?;
        } else {
            check(
                self.train.loss.is_none(),
                "train.loss",
                "chooses a regression's loss (classifiers train on cross-entropy); set data.task = \"regression\" or remove the key",
            )?;
        }

        if let Some(b) = d.eval_max_batches {
            check(b > 0, "data.eval_max_batches", "must be at least 1")?;
        }

        let o = &self.optimizer;
        check(
            o.lr > 0.0 && o.lr.is_finite(),
            "optimizer.lr",
            "must be a positive number",
        )?;
        check(
            o.weight_decay >= 0.0,
            "optimizer.weight_decay",
            "must be >= 0",
        )?;
        check(
            o.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "optimizer.betas",
            "both betas must be in [0, 1)",
        )?;
        check(o.eps > 0.0, "optimizer.eps", "must be > 0")?;
        check(
            (0.0..1.0).contains(&o.momentum),
            "optimizer.momentum",
            "must be in [0, 1)",
        )?;
        check(
            !o.nesterov || o.momentum > 0.0,
            "optimizer.nesterov",
            "needs optimizer.momentum > 0",
        )?;
        check(
            o.kind == OptimizerKind::Sgd || (o.momentum == 0.0 && !o.nesterov),
            "optimizer.momentum",
            "applies to kind = \"sgd\" only (AdamW uses optimizer.betas)",
        )?;

        let s = &self.schedule;
        check(
            s.min_lr >= 0.0 && s.min_lr <= o.lr,
            "schedule.min_lr",
            "must be in [0, optimizer.lr]",
        )?;
        check(s.step_size > 0, "schedule.step_size", "must be at least 1")?;
        check(
            s.gamma > 0.0 && s.gamma <= 1.0,
            "schedule.gamma",
            "must be in (0, 1]",
        )?;
        if s.kind == ScheduleKind::Cosine {
            check(
                o.lr <= 1.0,
                "optimizer.lr",
                "must be at most 1 with the cosine schedule",
            )?;
        }

        let t = &self.train;
        match (t.max_steps, t.epochs) {
            (Some(0), _) => bail!("train.max_steps: must be at least 1"),
            (_, Some(0)) => bail!("train.epochs: must be at least 1"),
            (Some(_), Some(_)) => {
                bail!("train.max_steps and train.epochs: set one of them, not both")
            }
            (None, None) => bail!("train: set train.max_steps or train.epochs"),
            _ => {}
        }
        check(t.log_every > 0, "train.log_every", "must be at least 1")?;
        check(
            t.grad_accum_steps > 0,
            "train.grad_accum_steps",
            "must be at least 1",
        )?;
        if let Some(c) = t.grad_clip_norm {
            check(c > 0.0, "train.grad_clip_norm", "must be > 0")?;
        }
        if let Some(k) = self.checkpoint.keep_last {
            check(k > 0, "checkpoint.keep_last", "must be at least 1")?;
        }
        if self.checkpoint.best_metric.is_some() {
            check(
                self.data.valid_fraction > 0.0,
                "checkpoint.best_metric",
                "needs a validation split (data.valid_fraction > 0)",
            )?;
        }
        Ok(())
    }
}

fn check(ok: bool, key: &str, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("{key}: {what}")
    }
}
