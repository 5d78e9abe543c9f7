//! Drift detection: how far what a served model sees has moved from the data it was trained on.
//!
//! - [`stats`]: the tests and distances, each as the tools engineers already read define it
//!   (scipy's, which Evidently uses): the two-sample Kolmogorov-Smirnov test, Pearson's
//!   chi-square goodness-of-fit test, the population stability index, the Jensen-Shannon
//!   distance;
//! - [`reservoir`]: a bounded, seeded uniform sample of a stream (the reference rows that
//!   two-sample tests compare against);
//! - [`reference`]: what an export keeps of each training feature, and the comparison of new
//!   values with it;
//! - [`report`]: a data set's verdict over all its features and its predictions (the stated
//!   defaults: level 0.05 with Bonferroni's correction, drift at half of the features);
//! - [`image`]: the summary features of an image (brightness, contrast, sharpness, channel
//!   means) that images are compared on.
//!
//! No burn and no other Kiln crate: exports record references with it, `kiln serve` and
//! `kiln drift` compare against them.

#![warn(missing_docs)]

pub mod image;
pub mod reference;
pub mod report;
pub mod reservoir;
pub mod stats;

pub use reference::{Current, FeatureDrift, FeatureKind, FeatureReference};
pub use report::{report, report_with, Options, Report, Rule};
pub use reservoir::Reservoir;
pub use stats::{
    chi_square, chi_square_two_sample, jensen_shannon, ks_two_sample, psi, two_proportion_less,
    Test,
};
