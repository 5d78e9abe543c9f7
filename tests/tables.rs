//! Tables as people save them (`data.format = "csv"` with a header of column names): the Palmer
//! penguins table as R writes it (text columns, missing values written NA) trains to the
//! accuracy such a table allows; the same table with a byte-order mark and CRLF, tab-separated,
//! or semicolon-separated and gzip-compressed trains to the same weights; bad tables are
//! one-line errors naming the file, line, column and what to do; exports predict rows by column
//! name (`kiln predict`) and, as ONNX, give onnxruntime's logits on the schema's features.

mod common;

use std::path::Path;

use common::{fails_with, kiln, repo_root, stderr};
use serde_json::Value;

const PENGUINS: &str = "configs/penguins-mlp.toml";

/// Trains `config` with `sets` into `out` (flex) and returns the JSON summary.
fn train(config: &str, out: &Path, sets: &[String]) -> Value {
    let output_dir = format!("run.output_dir=\"{}\"", out.display());
    let mut args = vec!["train", config, "--backend", "flex", "--set", &output_dir];
    for s in sets {
        args.extend(["--set", s]);
    }
    let o = kiln(&args);
    assert!(o.status.success(), "kiln {args:?}:\n{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn penguins_text() -> String {
    std::fs::read_to_string(repo_root().join("datasets/tabular/penguins.csv")).unwrap()
}

#[test]
fn penguins_as_r_writes_them_train_to_95_percent_test_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = train(PENGUINS, tmp.path(), &[]);
    let test = &summary["test"];
    assert!(test["accuracy"].as_f64().unwrap() >= 0.95, "{summary}");
    // 20% of each species held out: 30 of 152 Adelie, 14 of 68 Chinstrap, 25 of 124 Gentoo.
    assert_eq!(test["samples"], 69, "{summary}");
    // What the columns mean is saved with the run.
    let run = Path::new(summary["run_dir"].as_str().unwrap());
    let schema: Value =
        serde_json::from_slice(&std::fs::read(run.join("table.json")).unwrap()).unwrap();
    assert_eq!(
        schema["target"]["classes"],
        serde_json::json!(["Adelie", "Chinstrap", "Gentoo"])
    );
    let island = &schema["features"][0];
    assert_eq!(island["name"], "island");
    assert_eq!(island["kind"], "categorical");
    let bill = &schema["features"][1];
    assert_eq!(
        (&bill["name"], &bill["kind"]),
        (&"bill_length_mm".into(), &"numeric".into())
    );
    assert!(
        bill["fill"].as_f64().unwrap() > 40.0,
        "the median bill length: {bill}"
    );
}

#[test]
fn a_bom_crlf_tsv_and_gzip_table_train_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let text = penguins_text();
    let bom_crlf = format!("\u{feff}{}", text.replace('\n', "\r\n"));
    let tsv = text.replace(',', "\t");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.replace(',', ";").as_bytes()).unwrap();
    let variants: [(&str, Vec<u8>); 3] = [
        ("bom.csv", bom_crlf.into_bytes()),
        ("penguins.tsv", tsv.into_bytes()),
        ("penguins.csv.gz", gz.finish().unwrap()),
    ];
    let short = "train.max_steps=40".to_string();
    let reference = train(
        PENGUINS,
        &tmp.path().join("ref"),
        std::slice::from_ref(&short),
    );
    let weights = |summary: &Value| {
        std::fs::read(Path::new(summary["checkpoint"].as_str().unwrap()).join("model.safetensors"))
            .unwrap()
    };
    for (name, bytes) in variants {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let summary = train(
            PENGUINS,
            &tmp.path().join(name.replace('.', "-")),
            &[short.clone(), format!("data.path=\"{}\"", path.display())],
        );
        assert!(
            weights(&summary) == weights(&reference),
            "{name} trained differently"
        );
        assert_eq!(summary["test"], reference["test"], "{name}");
    }
}

#[test]
fn bad_tables_are_one_line_errors_naming_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("run.output_dir=\"{}\"", tmp.path().display());
    let with = |sets: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["train", PENGUINS, "--set", &out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for s in sets {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        args
    };
    let check = |sets: &[&str], needles: &[&str]| {
        let args = with(sets);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needles);
    };
    check(
        &["data.label=\"kind\""],
        &[
            "data.label",
            "no column named `kind`",
            "species, island, bill_length_mm",
        ],
    );
    check(
        &["data.missing=\"error\""],
        &[
            "penguins.csv line ",
            "column `",
            "missing value",
            "data.missing",
        ],
    );
    // A number column with a word in it.
    let bad = tmp.path().join("bad.csv");
    let text = penguins_text().replacen("39.1", "thirty-nine", 1);
    std::fs::write(&bad, text).unwrap();
    let path = format!("data.path=\"{}\"", bad.display());
    check(
        &[&path],
        &["bad.csv line 2 column `bill_length_mm`: `thirty-nine` is not a number"],
    );
    // A row with a cell too many.
    let text = penguins_text().replacen("39.1", "39,1", 1);
    std::fs::write(&bad, text).unwrap();
    check(
        &[&path],
        &["bad.csv", "line 2: 9 cells where the header has 8 columns"],
    );
    // Nothing was written for runs that never started.
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "only bad.csv"
    );
}

#[test]
fn an_export_predicts_rows_of_the_table_by_column_name() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = train(PENGUINS, tmp.path(), &[]);
    let run = summary["run_dir"].as_str().unwrap();
    let export = tmp.path().join("export");
    let o = kiln(&[
        "export",
        run,
        "--format",
        "kiln",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(export.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], 4);
    assert_eq!(manifest["input"]["names"][0], "island=Biscoe");

    // Rows as a user has them: other column order, no label, a missing value (filled as in
    // training), a column the model does not use.
    let rows = tmp.path().join("new.csv");
    std::fs::write(
        &rows,
        "note,sex,year,island,body_mass_g,flipper_length_mm,bill_depth_mm,bill_length_mm\n\
         a,male,2007,Torgersen,3750,181,18.7,39.1\n\
         b,female,2008,Biscoe,4500,210,NA,46.5\n\
         c,female,2009,Dream,3500,195,17.9,49.5\n",
    )
    .unwrap();
    let o = kiln(&["predict", export.to_str().unwrap(), rows.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(labels, ["Adelie", "Gentoo", "Chinstrap"]);

    // An island the model never saw; a column it needs missing.
    std::fs::write(
        &rows,
        "sex,year,island,body_mass_g,flipper_length_mm,bill_depth_mm,bill_length_mm\n\
         male,2007,Anvers,3750,181,18.7,39.1\n",
    )
    .unwrap();
    let args = ["predict", export.to_str().unwrap(), rows.to_str().unwrap()];
    fails_with(
        &args,
        &["new.csv line 2 column `island`: unknown category `Anvers`; the model knows Biscoe, Dream, Torgersen"],
    );
    std::fs::write(&rows, "sex,year,island\nmale,2007,Dream\n").unwrap();
    fails_with(
        &args,
        &[
            "new.csv: no column named `bill_length_mm`",
            "the model was trained with column",
        ],
    );
}

#[test]
fn onnxruntime_runs_a_table_models_onnx_export_on_the_schemas_features() {
    let Some(python) = common::python_with("onnxruntime") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let summary = train(PENGUINS, tmp.path(), &[]);
    let run = summary["run_dir"].as_str().unwrap();
    let (kiln_out, _) = common::export(run, "kiln", "none", tmp.path());
    let (onnx_out, _) = common::export(run, "onnx", "none", tmp.path());
    // Kiln's logits for every penguin, read by column name (NA filled with the medians)...
    let csv = repo_root().join("datasets/tabular/penguins.csv");
    let o = kiln(&[
        "predict",
        kiln_out.to_str().unwrap(),
        csv.to_str().unwrap(),
        "--logits",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let logits: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["logits"].clone())
        .collect();
    // ... and the ONNX model's on the same rows as the manifest's schema encodes them.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(kiln_out.join("manifest.json")).unwrap()).unwrap();
    let schema: kiln_data::TableSchema =
        serde_json::from_value(manifest["input"]["table"].clone()).unwrap();
    let table = kiln_data::read_table(&csv, None).unwrap();
    let rows: Vec<usize> = (0..table.rows.len()).collect();
    let encoded = schema.encode(&table, &rows, false).unwrap();
    let inputs: Vec<&[f32]> = encoded.features.chunks_exact(schema.width()).collect();
    assert_eq!((inputs.len(), logits.len()), (344, 344));
    let result = common::check_onnx(&python, &onnx_out, &inputs, &logits, tmp.path());
    assert_eq!(result["rows"], 344, "{result}");
}

#[test]
fn parquet_written_by_pyarrow_trains_as_the_csv_of_the_same_data() {
    let Some(python) = common::python_with("pyarrow") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let parquet = tmp.path().join("penguins.parquet");
    // pyarrow reads the CSV (NA becomes null, in the string column sex too) and writes it with
    // its defaults (snappy).
    let script = "import sys, pyarrow.csv as c, pyarrow.parquet as p\n\
                  o = c.ConvertOptions(strings_can_be_null=True)\n\
                  t = c.read_csv(sys.argv[1], convert_options=o)\n\
                  assert t.column('sex').null_count == 11 and str(t.schema.field('sex').type) == 'string'\n\
                  p.write_table(t, sys.argv[2])";
    let o = std::process::Command::new(python)
        .args(["-c", script])
        .arg(repo_root().join("datasets/tabular/penguins.csv"))
        .arg(&parquet)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let short = "train.max_steps=40".to_string();
    let csv = train(
        PENGUINS,
        &tmp.path().join("csv"),
        std::slice::from_ref(&short),
    );
    let pq = train(
        PENGUINS,
        &tmp.path().join("parquet"),
        &[short, format!("data.path=\"{}\"", parquet.display())],
    );
    let weights = |summary: &Value| {
        std::fs::read(Path::new(summary["checkpoint"].as_str().unwrap()).join("model.safetensors"))
            .unwrap()
    };
    assert!(weights(&pq) == weights(&csv), "Parquet trained differently");
    assert_eq!(pq["test"], csv["test"]);
    // A missing value in Parquet is its null: under data.missing = "error", the row is named.
    let o = kiln(&[
        "train",
        PENGUINS,
        "--set",
        &format!("data.path=\"{}\"", parquet.display()),
        "--set",
        "data.missing=\"error\"",
        "--set",
        &format!("run.output_dir=\"{}\"", tmp.path().join("x").display()),
    ]);
    assert!(
        stderr(&o).contains("penguins.parquet row ") && stderr(&o).contains("missing value"),
        "{}",
        stderr(&o)
    );
}
