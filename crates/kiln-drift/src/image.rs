//! The summary features of an image that drift is measured on (an image's pixels are too many,
//! and each alone says little): how bright it is, how much contrast it has, the mean of each
//! colour channel, and how sharp it is.

/// The names of the summaries of an image of `channels` channels, in the order
/// [`summaries`] gives them.
pub fn summary_names(channels: usize) -> Vec<String> {
    let mut names = vec![
        "mean_intensity".to_string(),
        "contrast".to_string(),
        "sharpness".to_string(),
    ];
    if channels == 3 {
        names.extend(["red_mean", "green_mean", "blue_mean"].map(String::from));
    }
    names
}

/// The summaries of one image, `pixels` in `[c, h, w]` order with values in [0, 1]: the mean of
/// every value, their standard deviation (contrast), the mean absolute difference of
/// horizontally adjacent values (sharpness), and for 3 channels each channel's mean.
pub fn summaries(pixels: &[f32], shape: [usize; 3]) -> Vec<f64> {
    let [c, h, w] = shape;
    let n = pixels.len().max(1) as f64;
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    let mut edges = 0.0;
    for row in pixels.chunks_exact(w.max(1)) {
        edges += row
            .windows(2)
            .map(|p| f64::from((p[1] - p[0]).abs()))
            .sum::<f64>();
    }
    let pairs = (c * h * w.saturating_sub(1)).max(1) as f64;
    let mut out = vec![mean, var.sqrt(), edges / pairs];
    if c == 3 {
        for channel in pixels.chunks_exact(h * w) {
            out.push(channel.iter().map(|&p| f64::from(p)).sum::<f64>() / (h * w) as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brightness_contrast_and_channels_are_what_they_say() {
        let img: Vec<f32> = (0..16)
            .map(|i| if i % 2 == 0 { 0.25 } else { 0.75 })
            .collect();
        let s = summaries(&img, [1, 4, 4]);
        assert_eq!(summary_names(1).len(), s.len());
        assert!(
            (s[0] - 0.5).abs() < 1e-12 && (s[1] - 0.25).abs() < 1e-12 && (s[2] - 0.5).abs() < 1e-12,
            "{s:?}"
        );
        let brighter: Vec<f32> = img.iter().map(|p| p + 0.1).collect();
        let b = summaries(&brighter, [1, 4, 4]);
        assert!((b[0] - 0.6).abs() < 1e-6 && (b[1] - s[1]).abs() < 1e-6);
        let flatter: Vec<f32> = img.iter().map(|p| 0.5 + (p - 0.5) / 2.0).collect();
        let f = summaries(&flatter, [1, 4, 4]);
        assert!((f[0] - 0.5).abs() < 1e-6 && (f[1] - 0.125).abs() < 1e-6);
        let rgb: Vec<f32> = [0.1f32, 0.5, 0.9]
            .iter()
            .flat_map(|&v| vec![v; 4])
            .collect();
        let s = summaries(&rgb, [3, 2, 2]);
        assert_eq!(summary_names(3).len(), s.len());
        assert!(
            (s[3] - 0.1).abs() < 1e-6 && (s[5] - 0.9).abs() < 1e-6,
            "{s:?}"
        );
    }
}
