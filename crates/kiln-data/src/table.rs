//! Tables as people save them: a CSV or TSV file with a header of column names, as pandas'
//! `to_csv`, R's `write.csv` or a spreadsheet writes it. Comma, tab and semicolon delimiters
//! (detected from the header, or given), quoted fields, CRLF line ends, a UTF-8 byte-order mark
//! and gzip compression (`.csv.gz`) are all read; blank lines are skipped.
//!
//! [`read_table`] gives the cells as text with the line each row came from; [`schema`] decides
//! what the columns mean (numbers, categories, the label) from the training rows and turns rows
//! into model inputs.

mod parquet;
pub mod schema;

pub use self::parquet::read_parquet;

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::read::read_bytes;

/// The UTF-8 byte-order mark some programs (Excel among them) put at the start of a CSV file.
const BOM: &str = "\u{feff}";

/// The delimiters [`read_table`] detects.
const DELIMITERS: [u8; 3] = [b',', b'\t', b';'];

/// A table read from a file: its column names and every row's cells as text.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The file, as error messages name it.
    pub source: String,
    /// The header's column names, in file order.
    pub columns: Vec<String>,
    /// One entry per data row: its cells, as many as there are columns (trimmed, unquoted).
    pub rows: Vec<Vec<String>>,
    /// The line of the file each row starts on (1-based; Parquet: the row number), for error
    /// messages.
    pub lines: Vec<u64>,
    /// What `lines` count: `"line"` (a text file) or `"row"` (Parquet).
    pub line_word: &'static str,
}

impl Table {
    /// The index of the column named `name`.
    ///
    /// # Errors
    /// When no column has that name: the message lists the columns there are.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            anyhow!(
                "{}: no column named `{name}`; its columns are {}",
                self.source,
                self.columns.join(", ")
            )
        })
    }

    /// Where row `row` is, for messages: `FILE line N`.
    pub fn at(&self, row: usize) -> String {
        format!("{} {} {}", self.source, self.line_word, self.lines[row])
    }
}

/// Reads a table from `path`: Parquet when its name ends in `.parquet`, else delimited text
/// ([`read_table`]).
///
/// # Errors
/// As [`read_parquet`] and [`read_table`].
pub fn read_any_table(path: &Path, delimiter: Option<u8>) -> Result<Table> {
    if is_parquet(path) {
        read_parquet(path)
    } else {
        read_table(path, delimiter)
    }
}

/// Whether `path` names a Parquet file (`.parquet`, `.parq`, `.pq`).
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "parquet" | "parq" | "pq"))
}

/// Reads a delimited text table with a header row from `path` (gzip-compressed or not).
/// `delimiter` is detected from the header when `None`: whichever of comma, tab and semicolon
/// occurs most often outside quotes (comma when none does, a one-column table).
///
/// # Errors
/// One line naming the file (and the line where it applies) when it cannot be read, is not
/// UTF-8, is empty, has an empty or repeated column name, or a row with a different number of
/// cells than the header.
pub fn read_table(path: &Path, delimiter: Option<u8>) -> Result<Table> {
    let source = path.display().to_string();
    let bytes = read_bytes(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| anyhow!("{source}: not UTF-8 text ({e}); save the table as UTF-8 CSV"))?;
    parse_table(source, text.strip_prefix(BOM).unwrap_or(text), delimiter)
}

/// [`read_table`] of text already in memory; `source` names it in errors.
pub fn parse_table(source: String, text: &str, delimiter: Option<u8>) -> Result<Table> {
    let header_line = text.lines().find(|l| !l.trim().is_empty());
    let Some(header_line) = header_line else {
        bail!("{source}: the file is empty; a table starts with a header of column names");
    };
    let delimiter = delimiter.unwrap_or_else(|| sniff_delimiter(header_line));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| {
            anyhow!(
                "{source}: the header cannot be read: {}",
                csv_error(&e, text, &[])
            )
        })?
        .iter()
        .map(str::to_string)
        .collect();
    for (i, name) in columns.iter().enumerate() {
        if name.is_empty() {
            bail!(
                "{source} line 1: column {} has no name; give every column a name in the header",
                i + 1
            );
        }
        if columns[..i].contains(name) {
            bail!("{source} line 1: two columns are named `{name}`; rename one");
        }
    }
    let newlines: Vec<usize> = (text.bytes().enumerate())
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| anyhow!("{source}: {}", csv_error(&e, text, &newlines)))?;
        let line = line_of(text, &newlines, record.position());
        rows.push(record.iter().map(str::to_string).collect());
        lines.push(line);
    }
    Ok(Table {
        source,
        columns,
        rows,
        lines,
        line_word: "line",
    })
}

/// The delimiter of a header line: the most frequent of comma, tab and semicolon outside double
/// quotes (comma on a tie or when none occurs).
pub fn sniff_delimiter(header: &str) -> u8 {
    let mut counts = [0usize; DELIMITERS.len()];
    let mut quoted = false;
    for b in header.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted {
            if let Some(i) = DELIMITERS.iter().position(|&d| d == b) {
                counts[i] += 1;
            }
        }
    }
    let mut best = 0;
    for i in 1..DELIMITERS.len() {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    DELIMITERS[best]
}

/// The file line a record starts on. (csv's own line count skips blank lines, and its position
/// of a record is the line end before it: the first byte after the line ends that follow.)
fn line_of(text: &str, newlines: &[usize], pos: Option<&csv::Position>) -> u64 {
    let Some(pos) = pos else { return 0 };
    let byte = pos.byte() as usize;
    let start = byte
        + (text.as_bytes()[byte.min(text.len())..].iter())
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
    1 + newlines.partition_point(|&n| n < start) as u64
}

/// A csv error as one line with its line number and what to do.
fn csv_error(e: &csv::Error, text: &str, newlines: &[usize]) -> String {
    let line_of = |pos: Option<&csv::Position>| line_of(text, newlines, pos);
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "line {}: {len} cells where the header has {expected_len} columns; fix or remove \
             that row (or set data.delimiter if the delimiter was detected wrongly)",
            line_of(pos.as_ref())
        ),
        csv::ErrorKind::Utf8 { pos, err } => format!(
            "line {}: not UTF-8 text ({err}); save the table as UTF-8 CSV",
            line_of(pos.as_ref())
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tests::gzip;

    fn parse(text: &str) -> Result<Table> {
        parse_table("t.csv".into(), text, None)
    }

    #[test]
    fn pandas_csv_with_quotes_crlf_and_blank_lines() {
        let t = parse("a,b,name\r\n1,2,\"x, y\"\r\n\r\n3, 4 ,\"say \"\"hi\"\"\"\r\n").unwrap();
        assert_eq!(t.columns, ["a", "b", "name"]);
        assert_eq!(
            t.rows,
            [vec!["1", "2", "x, y"], vec!["3", "4", "say \"hi\""]]
        );
        assert_eq!(t.lines, [2, 4]);
        assert_eq!(t.at(1), "t.csv line 4");
    }

    #[test]
    fn the_delimiter_is_detected_from_the_header() {
        assert_eq!(sniff_delimiter("a\tb\tc"), b'\t');
        assert_eq!(sniff_delimiter("a;b;\"c,d\""), b';');
        assert_eq!(sniff_delimiter("a,b"), b',');
        assert_eq!(sniff_delimiter("only"), b',');
        let t = parse("x\ty\n1,5\t2\n").unwrap();
        assert_eq!(t.rows, [vec!["1,5", "2"]]);
        let t = parse_table("t".into(), "x;y\n1;2\n", Some(b',')).unwrap();
        assert_eq!(t.columns, ["x;y"]);
    }

    #[test]
    fn a_bom_and_gzip_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("t.csv");
        std::fs::write(&plain, "\u{feff}species,x\nfoo,1\n").unwrap();
        let gz = dir.path().join("t.csv.gz");
        std::fs::write(&gz, gzip("species,x\nfoo,1\n".as_bytes())).unwrap();
        for p in [plain, gz] {
            let t = read_table(&p, None).unwrap();
            assert_eq!(t.columns, ["species", "x"], "{}", p.display());
            assert_eq!(t.column("species").unwrap(), 0);
        }
    }

    #[test]
    fn parquet_is_told_by_its_name_and_a_file_that_is_not_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        assert!(is_parquet(&path) && !is_parquet(Path::new("t.csv")));
        let e = read_any_table(&path, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a Parquet file", path.display())),
            "{e}"
        );
    }

    #[test]
    fn bad_tables_name_file_line_and_fix() {
        for (text, want) in [
            ("", "the file is empty"),
            ("a,,c\n1,2,3\n", "column 2 has no name"),
            ("a,b,a\n1,2,3\n", "two columns are named `a`"),
            (
                "a,b\n1,2\n3\n",
                "line 3: 1 cells where the header has 2 columns",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("t.csv"), "{text:?}: {e}");
        }
        let t = parse("a,b\n1,2\n").unwrap();
        let e = t.column("species").unwrap_err().to_string();
        assert!(
            e.contains("no column named `species`; its columns are a, b"),
            "{e}"
        );
    }
}
