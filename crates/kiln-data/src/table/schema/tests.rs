use super::*;
use crate::table::parse_table;

const PENGUINS: &str = "species,island,bill_length_mm,sex,year\n\
    Adelie,Torgersen,39.1,male,2007\n\
    Adelie,Torgersen,NA,NA,2007\n\
    Gentoo,Biscoe,47.5,female,2008\n\
    Chinstrap,Dream,50.0,female,2009\n\
    Gentoo,Biscoe,45.0,,2009\n";

fn penguins() -> Table {
    parse_table("p.csv".into(), PENGUINS, None).unwrap()
}

fn options(missing: Missing) -> TableOptions {
    TableOptions {
        label: Some("species".into()),
        missing,
        ..TableOptions::default()
    }
}

#[test]
fn names_strings_and_numbers_become_classes_categories_and_numbers() {
    let t = penguins();
    let s = TableSchema::fit(&[&t], &[0, 1, 2, 3, 4], &options(Missing::Mean)).unwrap();
    assert_eq!(s.classes().unwrap(), ["Adelie", "Chinstrap", "Gentoo"]);
    assert_eq!(
        s.input_names(),
        [
            "island=Biscoe",
            "island=Dream",
            "island=Torgersen",
            "bill_length_mm",
            "sex=female",
            "sex=male",
            "year"
        ]
    );
    assert_eq!(s.width(), 7);
    let e = s.encode(&t, &[0, 1, 4], true).unwrap();
    assert_eq!(e.classes, [0, 0, 2]);
    // Row 1: bill length filled with the mean of the four present ones, sex with the mode
    // (female: 2 of 3).
    let mean = ((39.1f64 + 47.5 + 50.0 + 45.0) / 4.0) as f32;
    assert_eq!(&e.features[7..14], &[0.0, 0.0, 1.0, mean, 1.0, 0.0, 2007.0]);
    assert_eq!(e.rows, [0, 1, 4]);
}

#[test]
fn fill_statistics_come_from_the_training_rows_only() {
    let t = penguins();
    let s = TableSchema::fit(&[&t], &[0, 1, 2], &options(Missing::Median)).unwrap();
    // Training rows 0..3: bill lengths 39.1 and 47.5, so the median is their mean.
    assert_eq!(s.features[1].kind, ColumnKind::Numeric { fill: Some(43.3) });
    // Categories are every value of the data; the fill only the training rows' mode (a tie of
    // female and male: the first in order).
    assert_eq!(
        s.features[2].kind,
        ColumnKind::Categorical {
            categories: vec!["female".into(), "male".into()],
            fill: Some("female".into())
        }
    );
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<TableSchema>(&json).unwrap(), s);
}

#[test]
fn missing_values_are_an_error_or_dropped_as_configured() {
    let t = penguins();
    let all: Vec<usize> = (0..5).collect();
    let s = TableSchema::fit(&[&t], &all, &options(Missing::Error)).unwrap();
    let e = s.encode(&t, &all, true).unwrap_err().to_string();
    assert_eq!(
        e,
        "p.csv line 3 column `bill_length_mm`: missing value; fill it in, or set data.missing to \
         \"drop\", \"mean\", \"median\" or \"mode\""
    );
    let s = TableSchema::fit(&[&t], &all, &options(Missing::Drop)).unwrap();
    let e = s.encode(&t, &all, true).unwrap();
    assert_eq!(e.rows, [0, 2, 3]);
    assert_eq!(e.features.len(), 3 * s.width());
}

#[test]
fn chosen_features_categorical_numbers_and_regression() {
    let t = penguins();
    let opts = TableOptions {
        label: Some("bill_length_mm".into()),
        features: Some(vec!["year".into(), "island".into()]),
        categorical: vec!["year".into()],
        missing: Missing::Drop,
        task: Task::Regression,
    };
    let s = TableSchema::fit(&[&t], &[0, 1, 2, 3, 4], &opts).unwrap();
    assert_eq!(
        s.input_names(),
        [
            "year=2007",
            "year=2008",
            "year=2009",
            "island=Biscoe",
            "island=Dream",
            "island=Torgersen"
        ]
    );
    let e = s.encode(&t, &[0, 1, 2], true).unwrap();
    assert_eq!(e.targets, [39.1, 47.5]);
    assert_eq!(e.rows, [0, 2]);
    // Prediction: no label column needed.
    let new = parse_table("new.csv".into(), "island,year\nDream,2009\n", None).unwrap();
    let e = s.encode(&new, &[0], false).unwrap();
    assert_eq!(e.features, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
}

#[test]
fn bad_columns_and_values_name_file_line_column_and_fix() {
    let t = penguins();
    let all: Vec<usize> = (0..5).collect();
    let fit = |o: TableOptions| TableSchema::fit(&[&t], &all, &o).unwrap_err().to_string();
    let e = fit(TableOptions {
        label: Some("kind".into()),
        ..TableOptions::default()
    });
    assert!(
        e.contains("data.label: p.csv: no column named `kind`; its columns are species, island"),
        "{e}"
    );
    let e = fit(TableOptions {
        label: Some("species".into()),
        categorical: vec!["colour".into()],
        ..TableOptions::default()
    });
    assert!(e.contains("data.categorical lists `colour`"), "{e}");
    let e = fit(TableOptions {
        label: Some("year".into()),
        features: Some(vec!["species".into(), "year".into()]),
        ..TableOptions::default()
    });
    assert!(
        e.contains("data.features lists `year`, the label column"),
        "{e}"
    );

    // A number column with a word in it; an unknown category; an unknown class.
    let bad = parse_table(
        "b.csv".into(),
        "x,colour,y\n1,red,a\n2,blue,b\nthree,red,a\n4,red,b\n",
        None,
    )
    .unwrap();
    let s = TableSchema::fit(&[&bad], &[0, 1], &TableOptions::default()).unwrap();
    let e = s.encode(&bad, &[0, 1, 2], true).unwrap_err().to_string();
    assert!(
        e.starts_with("b.csv line 4 column `x`: `three` is not a number"),
        "{e}"
    );
    let new = parse_table("new.csv".into(), "x,colour\n1,green\n", None).unwrap();
    let e = s.encode(&new, &[0], false).unwrap_err().to_string();
    assert_eq!(
        e,
        "new.csv line 2 column `colour`: unknown category `green`; the model knows blue, red"
    );
    let other = parse_table("o.csv".into(), "x,colour,y\n1,red,c\n", None).unwrap();
    let e = s.encode(&other, &[0], true).unwrap_err().to_string();
    assert!(
        e.contains("`c` is not one of the classes the model knows (a, b)"),
        "{e}"
    );
    let e = s.encode(&new, &[0], true).unwrap_err().to_string();
    assert!(e.contains("new.csv: no column named `y`"), "{e}");
    let lacking = parse_table("l.csv".into(), "colour\nred\n", None).unwrap();
    let e = s.encode(&lacking, &[0], false).unwrap_err().to_string();
    assert!(e.contains("the model was trained with column `x`"), "{e}");
}

#[test]
fn one_class_is_not_a_classification() {
    let t = parse_table("c.csv".into(), "x,y\n1,a\n2,a\n", None).unwrap();
    let e = TableSchema::fit(&[&t], &[0, 1], &TableOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has 1 distinct value(s)") && e.contains("data.task"),
        "{e}"
    );
}

#[test]
fn numeric_classes_sort_as_numbers() {
    let t = parse_table("n.csv".into(), "x,y\n1,10\n2,2\n3,1\n", None).unwrap();
    let s = TableSchema::fit(&[&t], &[0, 1, 2], &TableOptions::default()).unwrap();
    assert_eq!(s.classes().unwrap(), ["1", "2", "10"]);
}
