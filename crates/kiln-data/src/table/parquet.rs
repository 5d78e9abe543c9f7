//! Parquet files (as pandas' `to_parquet` or pyarrow write them) as a [`Table`]: each cell as the
//! text a CSV of the same data would hold (numbers as their shortest exact decimal, a null as an
//! empty, missing cell), so that a table trains the same from either file.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::Table;

/// Reads every row of the Parquet file at `path`; `Table::lines` holds row numbers (from 1).
///
/// # Errors
/// One line naming the file: it cannot be opened or is not Parquet, a row cannot be decoded, or
/// a column holds values a table of numbers and text cannot (lists, maps, structs, binary).
pub fn read_parquet(path: &Path) -> Result<Table> {
    let source = path.display().to_string();
    let file = File::open(path).map_err(|e| anyhow!("cannot open dataset file {source}: {e}"))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{source}: not a Parquet file ({e})"))?;
    let columns: Vec<String> = (reader.metadata().file_metadata().schema().get_fields())
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let mut rows = Vec::new();
    for (i, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| anyhow!("{source} row {}: cannot be decoded ({e})", i + 1))?;
        let mut cells = Vec::with_capacity(columns.len());
        for (name, field) in row.get_column_iter() {
            cells.push(cell(field).map_err(|what| {
                anyhow!(
                    "{source} row {} column `{name}`: {what}; a table's columns hold numbers or \
                     text",
                    i + 1
                )
            })?);
        }
        rows.push(cells);
    }
    if columns.is_empty() {
        bail!("{source}: the file has no columns");
    }
    let lines = (1..=rows.len() as u64).collect();
    Ok(Table {
        source,
        columns,
        rows,
        lines,
        line_word: "row",
    })
}

/// A value as a CSV of the same data writes it.
fn cell(field: &Field) -> std::result::Result<String, String> {
    Ok(match field {
        Field::Null => String::new(),
        Field::Bool(b) => b.to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float16(v) => v.to_string(),
        Field::Float(v) => v.to_string(),
        Field::Double(v) => v.to_string(),
        Field::Str(s) => s.clone(),
        other => return Err(format!("a value of an unsupported type ({other})")),
    })
}
