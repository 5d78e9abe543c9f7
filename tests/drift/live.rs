//! Live drift in `kiln serve`: a model's window of served inputs compared with its export's
//! reference on `/v2/models/{name}/drift` and `/metrics`, labelled feedback giving live accuracy
//! (concept drift), and exports written before drift references served with drift unavailable.

use serde_json::{json, Value};

use super::data::{Images, Table};
use super::server::Server;
use super::{fixtures, WINDOW};

/// Posts `images` to `model` in requests of 50, with ids `{prefix}-{k}` when given.
fn infer_images(server: &Server, model: &str, images: &Images, prefix: Option<&str>) {
    for (k, chunk) in images.pixels.chunks(50).enumerate() {
        let data: Vec<f64> = chunk
            .iter()
            .flatten()
            .map(|p| p.round().clamp(0.0, 255.0) / 255.0)
            .collect();
        let mut body = json!({"inputs": [{
            "name": "input", "datatype": "FP32",
            "shape": [chunk.len(), 1, images.height, images.width], "data": data,
        }]});
        if let Some(prefix) = prefix {
            body["id"] = json!(format!("{prefix}-{k}"));
        }
        let answer = server.post(&format!("/v2/models/{model}/infer"), &body.to_string());
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

/// Posts every row of `table` (its feature columns, as text) to `model`, 20 rows a request.
fn infer_rows(server: &Server, model: &str, table: &Table, label: &str) {
    for chunk in table.rows.chunks(20) {
        let inputs: Vec<Value> = (table.header.iter().enumerate())
            .filter(|(_, name)| name.as_str() != label)
            .map(|(c, name)| {
                let cells: Vec<&str> = chunk.iter().map(|r| r[c].as_str()).collect();
                json!({"name": name, "datatype": "BYTES", "shape": [chunk.len()], "data": cells})
            })
            .collect();
        let body = json!({ "inputs": inputs }).to_string();
        let answer = server.post(&format!("/v2/models/{model}/infer"), &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

/// The value of the series `name{labels}` in the metrics text.
fn series(metrics: &str, name_and_labels: &str) -> f64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn drifted(answer: &Value) -> Vec<String> {
    super::drifted(&answer["report"])
}

#[test]
fn the_server_watches_its_window_and_flags_the_shifted_features() {
    let f = fixtures();
    let old = super::common::repo_root().join("tests/fixtures/v1/exports/wine-mlp-int8");
    let server = Server::start(
        &[&f.fashion, &f.penguins, &f.diabetes, &old],
        &["--drift-min-samples", "50", "--max-batch", "64"],
    );
    let drift = |model: &str| server.get(&format!("/v2/models/{model}/drift")).body;

    let before = drift("fashion");
    assert_eq!(before["status"], "collecting", "{before}");
    assert_eq!(before["window"]["size"], WINDOW);

    let window = f.fashion_test.sample(WINDOW, 5);
    infer_images(&server, "fashion", &window, None);
    let same = drift("fashion");
    assert_eq!(same["status"], "ready", "{same}");
    assert_eq!(same["window"]["samples"], WINDOW);
    assert_eq!(same["report"]["dataset_drift"], false, "{same}");
    assert!(drifted(&same).is_empty(), "{same}");
    let metrics = server.text("/metrics");
    assert_eq!(
        series(&metrics, "kiln_drift_detected{model=\"fashion\"}"),
        0.0
    );
    assert_eq!(
        series(&metrics, "kiln_drift_window_samples{model=\"fashion\"}"),
        WINDOW as f64
    );

    // Brighter images: the brightness summary drifts, not the contrast.
    infer_images(
        &server,
        "fashion",
        &window.map(|img| img.iter().map(|p| p + 12.0).collect()),
        None,
    );
    let bright = drift("fashion");
    assert!(
        drifted(&bright).contains(&"mean_intensity".to_string()),
        "{bright}"
    );
    assert!(
        !drifted(&bright).contains(&"contrast".to_string()),
        "{bright}"
    );
    let metrics = server.text("/metrics");
    let feature =
        |name: &str| format!("kiln_drift_feature_detected{{model=\"fashion\",feature=\"{name}\"}}");
    assert_eq!(
        series(&metrics, &feature("mean_intensity")),
        1.0,
        "{metrics}"
    );
    assert_eq!(series(&metrics, &feature("contrast")), 0.0);

    // Lower contrast: most features drift, and so does the window.
    let flat = window.map(|img| {
        let mean = img.iter().sum::<f64>() / img.len() as f64;
        img.iter().map(|p| mean + 0.8 * (p - mean)).collect()
    });
    infer_images(&server, "fashion", &flat, None);
    let low = drift("fashion");
    assert_eq!(low["report"]["dataset_drift"], true, "{low}");
    assert!(drifted(&low).contains(&"contrast".to_string()), "{low}");
    assert!(
        !drifted(&low).contains(&"mean_intensity".to_string()),
        "{low}"
    );
    let metrics = server.text("/metrics");
    assert_eq!(
        series(&metrics, "kiln_drift_detected{model=\"fashion\"}"),
        1.0
    );

    // Named tables and a regression: their test rows do not drift; an offset column does.
    for (model, table, label) in [
        ("penguins", &f.penguins_test, "species"),
        ("diabetes", &f.diabetes_test, "progression"),
    ] {
        infer_rows(&server, model, table, label);
        let answer = drift(model);
        assert_eq!(answer["status"], "ready", "{answer}");
        assert_eq!(
            answer["report"]["dataset_drift"], false,
            "{model}: {answer}"
        );
        assert!(drifted(&answer).is_empty(), "{model}: {answer}");
    }
    let mut offset = f.penguins_test.map_numbers("bill_length_mm", |v| v + 6.0);
    offset.rows.extend(offset.rows.clone());
    infer_rows(&server, "penguins", &offset, "species");
    let answer = drift("penguins");
    assert!(
        drifted(&answer).contains(&"bill_length_mm".to_string()),
        "{answer}"
    );

    // An export written before drift references: served, drift unavailable.
    let old = drift("wine-mlp-int8");
    assert_eq!(old["status"], "unavailable", "{old}");
    assert!(
        old["reason"]
            .as_str()
            .unwrap()
            .contains("before exports kept a drift reference"),
        "{old}"
    );
    let metrics = server.text("/metrics");
    assert_eq!(
        series(&metrics, "kiln_drift_available{model=\"wine-mlp-int8\"}"),
        0.0
    );
    server.terminate();
}

#[test]
fn labelled_feedback_gives_live_accuracy_and_flags_changed_labels() {
    let f = fixtures();
    let server = Server::start(
        &[&f.fashion],
        &["--name", "fashion", "--drift-window", "600"],
    );
    let labels = test_labels();
    let order: Vec<usize> = {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut o: Vec<usize> = (0..labels.len()).collect();
        o.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        o[..600].to_vec()
    };
    let images = Images {
        pixels: order
            .iter()
            .map(|&i| f.fashion_test.pixels[i].clone())
            .collect(),
        ..f.fashion_test.clone()
    };
    infer_images(&server, "fashion", &images, Some("batch"));
    let feedback = |k: usize, shift: usize| {
        let true_labels: Vec<usize> = order[k * 50..(k + 1) * 50]
            .iter()
            .map(|&i| (labels[i] + shift) % 10)
            .collect();
        let body = json!({"id": format!("batch-{k}"), "labels": true_labels}).to_string();
        server.post("/v2/models/fashion/feedback", &body)
    };
    // The first half labelled as the data set labels it: accuracy as on the test split.
    for k in 0..6 {
        assert_eq!(feedback(k, 0).status, 200);
    }
    let answer = server.get("/v2/models/fashion/drift").body;
    let live = answer["feedback"]["live_accuracy"].as_f64().unwrap();
    let expected = answer["feedback"]["expected_accuracy"].as_f64().unwrap();
    eprintln!("live accuracy {live:.3} on 300 labels; the export's test accuracy {expected:.3}");
    assert!((live - expected).abs() < 0.1, "{answer}");
    assert_eq!(answer["feedback"]["concept_drift"], false, "{answer}");

    // The same inputs, labelled differently from then on (concept drift): inputs do not move,
    // accuracy falls.
    for k in 6..12 {
        assert_eq!(feedback(k, 1).status, 200);
    }
    let answer = server.get("/v2/models/fashion/drift").body;
    eprintln!("after 300 relabelled samples: {}", answer["feedback"]);
    assert_eq!(answer["feedback"]["concept_drift"], true, "{answer}");
    assert_eq!(answer["report"]["dataset_drift"], false, "{answer}");
    let metrics = server.text("/metrics");
    assert_eq!(
        series(&metrics, "kiln_concept_drift_detected{model=\"fashion\"}"),
        1.0
    );
    assert_eq!(
        series(&metrics, "kiln_feedback_labels_total{model=\"fashion\"}"),
        600.0
    );

    let unknown = server.post(
        "/v2/models/fashion/feedback",
        r#"{"id": "nope", "labels": [1]}"#,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(
        unknown.body["error"]
            .as_str()
            .unwrap()
            .contains("send the id"),
        "{}",
        unknown.body
    );
    let bad = server.post(
        "/v2/models/fashion/feedback",
        r#"{"id": "batch-0", "labels": ["Cat"]}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body["error"]
            .as_str()
            .unwrap()
            .contains("is not one of the model's classes"),
        "{}",
        bad.body
    );
    server.terminate();
}

/// The Fashion-MNIST test labels.
fn test_labels() -> Vec<usize> {
    let path = super::common::repo_root().join("datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut bytes,
    )
    .unwrap();
    bytes[8..].iter().map(|&b| usize::from(b)).collect()
}

#[test]
fn a_language_models_window_of_prompt_tokens_drifts_on_other_text() {
    let f = fixtures();
    let server = Server::start(&[&f.gpt], &["--name", "bard"]);
    let text =
        std::fs::read_to_string(super::common::repo_root().join("datasets/text/shakespeare.txt"))
            .unwrap();
    let prompts: Vec<String> = text
        .chars()
        .collect::<Vec<char>>()
        .chunks(300)
        .skip(100)
        .step_by(7)
        .take(40)
        .map(|c| c.iter().collect())
        .collect();
    let generate = |prompt: &str| {
        let body = json!({"text_input": prompt, "parameters": {"max_tokens": 1}});
        let a = server.post("/v2/models/bard/generate", &body.to_string());
        assert_eq!(a.status, 200, "{}", a.body);
    };
    let drift = || server.get("/v2/models/bard/drift").body;
    generate(&prompts[0]);
    let answer = drift();
    assert_eq!(answer["status"], "collecting", "{answer}");
    for p in &prompts[1..20] {
        generate(p);
    }
    let answer = drift();
    assert_eq!(answer["status"], "ready", "{answer}");
    assert_eq!(answer["report"]["dataset_drift"], false, "{answer}");
    eprintln!("Shakespeare prompts: {}", answer["report"]["features"]);
    // The same text shouted: other characters, other frequencies.
    for p in &prompts[..40] {
        generate(&p.to_uppercase());
    }
    let answer = drift();
    eprintln!(
        "the same prompts in capitals: {}",
        answer["report"]["features"]
    );
    assert_eq!(answer["report"]["dataset_drift"], true, "{answer}");
    assert_eq!(drifted(&answer), ["token"], "{answer}");
    server.terminate();
}
