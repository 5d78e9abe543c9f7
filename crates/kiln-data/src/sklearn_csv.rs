//! Reading the CSV layout of scikit-learn's bundled datasets (iris, wine,
//! breast cancer): a header `n_samples,n_features,class_name_0,...`, then one
//! row per sample holding `n_features` numbers followed by the integer class.

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::read::{read_bytes, read_head};
use crate::Dataset;

/// What the header line should look like, for error messages.
const EXPECTED_HEADER: &str = "expected the scikit-learn header \
     `n_samples,n_features,class_name_0,class_name_1,...` such as `178,13,class_0,class_1,class_2`";

/// Whether a CSV file is in the scikit-learn layout: its first line starts with two whole
/// numbers (`n_samples,n_features`) where a table of named columns has names.
///
/// # Errors
/// When the file cannot be read.
pub fn is_sklearn_layout(path: &Path) -> Result<bool> {
    if crate::table::is_parquet(path) {
        return Ok(false);
    }
    // The header is the first non-blank line: within the first 64 KiB of any such file.
    let bytes = read_head(path, 64 << 10)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let cells: Vec<&str> = first.split(',').map(str::trim).collect();
    Ok(cells.len() >= 3 && cells[..2].iter().all(|c| c.parse::<usize>().is_ok()))
}

/// Reads a scikit-learn layout CSV file (gzip-compressed or raw).
///
/// Samples get the shape `[n_features]`; `num_classes` and `class_names` come
/// from the header. Blank lines are ignored.
///
/// # Errors
/// A single-line message naming the file (and the line and column where it
/// applies) when the file cannot be read, the header is not in the layout
/// above, a row has the wrong number of columns, a feature is not a finite
/// number, a target is not an integer in `0..num_classes`, or the number of
/// rows differs from the `n_samples` of the header.
pub fn load_sklearn_csv(path: &Path) -> Result<Dataset> {
    let shown = path.display();
    let bytes = read_bytes(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        anyhow!("{shown}: not a text file ({e}); expected a scikit-learn layout CSV file")
    })?;
    // (Excel and others start UTF-8 files with a byte-order mark.)
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty());

    let Some((header_line, header)) = lines.next() else {
        bail!("{shown}: the file is empty; {EXPECTED_HEADER}");
    };
    let header = Header::parse(header)
        .map_err(|why| anyhow!("{shown} line {header_line}: {why}; {EXPECTED_HEADER}"))?;

    let n_features = header.n_features;
    let columns = n_features + 1;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns {
            bail!(
                "{shown} line {line_no}: expected {columns} columns ({n_features} features + \
                 target), found {}; fix or remove that row",
                fields.len()
            );
        }
        for (column, field) in fields[..n_features].iter().enumerate() {
            let value = field.parse::<f32>().ok().filter(|v| v.is_finite());
            features.push(value.ok_or_else(|| {
                anyhow!(
                    "{shown} line {line_no} column {}: `{field}` is not a finite number; \
                     every feature must be a decimal number",
                    column + 1
                )
            })?);
        }
        labels.push(
            header
                .parse_target(fields[n_features])
                .map_err(|why| anyhow!("{shown} line {line_no}: {why}"))?,
        );
    }
    if labels.len() != header.n_samples {
        bail!(
            "{shown}: the header says {} samples but the file has {} data rows; the file is \
             damaged or truncated, copy it again",
            header.n_samples,
            labels.len()
        );
    }
    tracing::debug!(
        path = %shown,
        samples = labels.len(),
        n_features,
        classes = header.class_names.len(),
        "loaded CSV dataset"
    );
    Ok(Dataset {
        features,
        sample_shape: vec![n_features],
        labels,
        num_classes: header.class_names.len(),
        class_names: header.class_names,
        targets: Vec::new(),
    })
}

/// The parsed header line.
struct Header {
    n_samples: usize,
    n_features: usize,
    class_names: Vec<String>,
}

impl Header {
    /// Parses `n_samples,n_features,class_name_0,...`; the error says what is wrong.
    fn parse(line: &str) -> Result<Header, String> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 3 {
            return Err(format!(
                "header `{line}` has {} fields, but needs n_samples, n_features and at least \
                 one class name",
                fields.len()
            ));
        }
        let n_samples = fields[0]
            .parse::<usize>()
            .map_err(|_| format!("n_samples `{}` is not a non-negative integer", fields[0]))?;
        let n_features = fields[1]
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("n_features `{}` is not a positive integer", fields[1]))?;
        let class_names: Vec<String> = fields[2..].iter().map(|s| s.to_string()).collect();
        if let Some(k) = class_names.iter().position(String::is_empty) {
            return Err(format!("class name {k} is empty"));
        }
        Ok(Header {
            n_samples,
            n_features,
            class_names,
        })
    }

    /// Parses a row's target: an integer class index below the number of classes.
    fn parse_target(&self, field: &str) -> Result<u32, String> {
        let classes = self.class_names.len();
        let allowed = format!("allowed are 0..{classes} ({})", self.class_names.join(", "));
        let Ok(target) = field.parse::<i64>() else {
            return Err(format!(
                "target `{field}` is not an integer class index; {allowed}"
            ));
        };
        match u32::try_from(target) {
            Ok(class) if (class as usize) < classes => Ok(class),
            _ => Err(format!("target {target} is out of range; {allowed}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "\
4,2,red,green,blue
1.5,-2,0
0,3e2,2
  7.25 , 8 , 1
-1,0.5,2
";

    /// Loads `content` written to `small.csv`; also returns the file's path.
    fn load(content: &str) -> (Result<Dataset>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.csv");
        std::fs::write(&path, content).unwrap();
        (load_sklearn_csv(&path), path.display().to_string())
    }

    /// The single-line error message of loading `content`, with the path replaced by `FILE`.
    fn error(content: &str) -> String {
        let (result, path) = load(content);
        let msg = result.unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(&path), "{msg}");
        msg.replace(&path, "FILE")
    }

    #[test]
    fn parses_a_small_file() {
        let ds = load(SMALL).0.unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.sample_shape, vec![2]);
        assert_eq!(
            ds.features,
            vec![1.5, -2.0, 0.0, 300.0, 7.25, 8.0, -1.0, 0.5]
        );
        assert_eq!(ds.labels, vec![0, 2, 1, 2]);
        assert_eq!(ds.num_classes, 3);
        assert_eq!(ds.class_names, vec!["red", "green", "blue"]);
    }

    #[test]
    fn windows_line_endings_and_blank_lines_are_accepted() {
        let ds = load("2,1,a,b\r\n1,0\r\n\r\n2,1\r\n\r\n").0.unwrap();
        assert_eq!(ds.features, vec![1.0, 2.0]);
        assert_eq!(ds.labels, vec![0, 1]);
    }

    #[test]
    fn a_byte_order_mark_is_accepted_and_the_layout_recognized() {
        let ds = load(&format!("\u{feff}{SMALL}")).0.unwrap();
        assert_eq!(ds.len(), 4);
        let dir = tempfile::tempdir().unwrap();
        for (text, sklearn) in [
            (format!("\u{feff}{SMALL}"), true),
            (
                "sepal_length,sepal_width,species\n1,2,a\n".to_string(),
                false,
            ),
            ("1,2\n3,4\n".to_string(), false),
        ] {
            let path = dir.path().join("t.csv");
            std::fs::write(&path, &text).unwrap();
            assert_eq!(is_sklearn_layout(&path).unwrap(), sklearn, "{text}");
        }
    }

    #[test]
    fn empty_file_is_reported() {
        assert!(error("").starts_with("FILE: the file is empty; expected the scikit-learn header"));
    }

    #[test]
    fn header_not_in_sklearn_layout_is_reported() {
        let cases = [
            (
                "sepal_length,sepal_width,target\n",
                "n_samples `sepal_length` is not",
            ),
            (
                "4,2\n",
                "has 2 fields, but needs n_samples, n_features and at least one",
            ),
            ("4,0,a,b\n", "n_features `0` is not a positive integer"),
            ("4,2,a,,c\n", "class name 1 is empty"),
        ];
        for (content, why) in cases {
            let msg = error(content);
            assert!(msg.starts_with("FILE line 1: "), "{msg}");
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains("`178,13,class_0,class_1,class_2`"), "{msg}");
        }
    }

    #[test]
    fn wrong_column_count_is_reported() {
        let msg = error("2,2,a,b\n1,2,0\n1,2\n");
        assert!(
            msg.starts_with("FILE line 3: expected 3 columns (2 features + target), found 2"),
            "{msg}"
        );
    }

    #[test]
    fn non_numeric_feature_is_reported() {
        let msg = error("2,2,a,b\n1,2,0\n1,abc,1\n");
        assert!(
            msg.starts_with("FILE line 3 column 2: `abc` is not a finite number"),
            "{msg}"
        );
        let msg = error("1,2,a,b\nNaN,2,0\n");
        assert!(
            msg.starts_with("FILE line 2 column 1: `NaN` is not a finite number"),
            "{msg}"
        );
    }

    #[test]
    fn bad_targets_are_reported() {
        let cases = [
            (
                "1.5",
                "target `1.5` is not an integer class index; allowed are 0..2 (a, b)",
            ),
            (
                "x",
                "target `x` is not an integer class index; allowed are 0..2 (a, b)",
            ),
            ("2", "target 2 is out of range; allowed are 0..2 (a, b)"),
            ("-1", "target -1 is out of range; allowed are 0..2 (a, b)"),
        ];
        for (target, why) in cases {
            let msg = error(&format!("2,1,a,b\n0.5,1\n0.5,{target}\n"));
            assert_eq!(msg, format!("FILE line 3: {why}"));
        }
    }

    #[test]
    fn sample_count_mismatch_is_reported() {
        let msg = error("3,1,a,b\n1,0\n2,1\n");
        assert_eq!(
            msg,
            "FILE: the header says 3 samples but the file has 2 data rows; the file is damaged \
             or truncated, copy it again"
        );
    }
}
