//! End-to-end tests of `kiln serve` over real HTTP on 127.0.0.1: answers equal `kiln predict`
//! (Fashion-MNIST images, named-table rows, a regression, a language model's generation),
//! batched or not; exports written by earlier Kiln versions serve what they predicted then; and
//! (load.rs) 10,000 mixed requests, /metrics read by the Prometheus parser, the limits, and
//! SIGTERM under load.

#[path = "../common/mod.rs"]
mod common;
mod deploy;
mod load;
mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{kiln, repo_root, stderr, train};
use serde_json::{json, Value};
use server::Server;

const FASHION_TEST: &str = "datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

/// Exports made once for all the tests.
pub struct Exports {
    _dir: tempfile::TempDir,
    /// A small CNN trained on Fashion-MNIST.
    pub fashion: PathBuf,
    /// The penguins MLP (a named table: numeric and text columns, NA filled by the median).
    pub penguins: PathBuf,
    /// The diabetes regression (a named table, the target `progression`).
    pub diabetes: PathBuf,
    /// The smoke character GPT.
    pub gpt: PathBuf,
    /// A wider, deeper, untrained GPT whose generations take long enough to be in flight
    /// for a while (milliseconds per token).
    pub slow_gpt: PathBuf,
}

pub fn exports() -> &'static Exports {
    static EXPORTS: OnceLock<Exports> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let export = |run: &Path, name: &str| {
            let out = dir.path().join("exports").join(name);
            common::export_as(run, "kiln", &out);
            out
        };
        let run = train(
            "configs/fashion-mnist-cnn.toml",
            "flex",
            dir.path(),
            &[
                "model.channels=[4, 8]",
                "model.hidden=[32]",
                "train.max_steps=40",
            ],
        );
        let fashion = export(&run, "fashion");
        let run = train(
            "configs/penguins-mlp.toml",
            "flex",
            dir.path(),
            &["train.epochs=20"],
        );
        let penguins = export(&run, "penguins");
        let run = train(
            "configs/diabetes-regression.toml",
            "flex",
            dir.path(),
            &["train.epochs=20"],
        );
        let diabetes = export(&run, "diabetes");
        let run = train(
            common::SMOKE_GPT,
            "flex",
            dir.path(),
            &["train.max_steps=20"],
        );
        let gpt = export(&run, "gpt");
        let sets = [
            "run.name=\"slow-gpt\"",
            "model.n_layer=4",
            "model.n_embd=256",
            "model.n_head=4",
            "model.block_size=128",
            "data.batch_size=2",
            "train.max_steps=1",
        ];
        let run = train(common::SMOKE_GPT, "flex", dir.path(), &sets);
        let slow_gpt = export(&run, "slow-gpt");
        Exports {
            _dir: dir,
            fashion,
            penguins,
            diabetes,
            gpt,
            slow_gpt,
        }
    })
}

/// `kiln predict ARGS` on flex: one JSON value per output line.
pub fn predict(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["predict"];
    all.extend(args);
    all.extend(["--backend", "flex"]);
    let o = kiln(&all);
    assert!(o.status.success(), "kiln {all:?}:\n{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first `n` images of an IDX image file, pixels / 255, as Kiln's IDX reader gives them.
pub fn idx_images(path: &str, n: usize) -> Vec<Vec<f32>> {
    let (pixels, shape) = kiln_data::load_idx_images(&repo_root().join(path)).unwrap();
    let len = shape.iter().product();
    pixels
        .chunks_exact(len)
        .take(n)
        .map(<[f32]>::to_vec)
        .collect()
}

/// An infer request for `images`, as `[N, 1, 28, 28]` nested arrays.
pub fn image_request(images: &[&Vec<f32>]) -> String {
    let data: Vec<Vec<Vec<&[f32]>>> = images
        .iter()
        .map(|img| vec![img.chunks(28).collect()])
        .collect();
    json!({"inputs": [{"name": "input", "shape": [images.len(), 1, 28, 28], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// The output `name` of an infer answer.
pub fn output<'a>(answer: &'a Value, name: &str) -> &'a Value {
    let outputs = answer["outputs"].as_array().expect("outputs");
    &outputs
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"))["data"]
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Asserts that the classes and probabilities of `answer` (rows `rows` of it) are those of
/// `kiln predict`'s lines `want`, probabilities within 1e-5.
pub fn assert_predicted(answer: &Value, want: &[&Value]) {
    let classes = output(answer, "class").as_array().unwrap();
    let labels = output(answer, "label").as_array().unwrap();
    let probs = floats(output(answer, "probabilities"));
    let k = probs.len() / want.len();
    assert_eq!(classes.len(), want.len());
    for (i, w) in want.iter().enumerate() {
        assert_eq!(classes[i], w["class"], "row {i}");
        assert_eq!(labels[i], w["label"], "row {i}");
        for (got, want) in probs[i * k..(i + 1) * k]
            .iter()
            .zip(floats(&w["probabilities"]))
        {
            assert!((got - want).abs() <= 1e-5, "row {i}: {got} vs {want}");
        }
    }
}

#[test]
fn fashion_mnist_images_get_the_classes_and_probabilities_of_kiln_predict_batched_or_not() {
    let export = &exports().fashion;
    let e = export.to_str().unwrap();
    let want = predict(&[e, FASHION_TEST]);
    let images = idx_images(FASHION_TEST, 256);
    let server = Server::start(
        &[export.as_path()],
        &["--max-batch", "16", "--max-delay-ms", "20"],
    );

    let meta = server.get("/v2/models/fashion");
    assert_eq!(meta.status, 200);
    assert_eq!(
        meta.body["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}])
    );
    assert_eq!(
        meta.body["outputs"][2],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]})
    );
    assert_eq!(
        server.get("/v2/models/fashion/ready").body,
        json!({"name": "fashion", "ready": true})
    );

    // One request at a time (each its own forward pass), several images in one request, and
    // the flat [N, 784] layout.
    for i in 0..8 {
        let a = server.post("/v2/models/fashion/infer", &image_request(&[&images[i]]));
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_predicted(&a.body, &[&want[i]]);
    }
    let refs: Vec<&Vec<f32>> = images[8..24].iter().collect();
    let a = server.post("/v2/models/fashion/infer", &image_request(&refs));
    assert_predicted(&a.body, &want[8..24].iter().collect::<Vec<_>>());
    let flat: Vec<f32> = images[24..28].concat();
    let body = json!({"id": "flat-4", "inputs": [{"name": "input", "shape": [4, 784], "datatype": "FP32", "data": flat}],
        "outputs": [{"name": "class"}, {"name": "label"}, {"name": "probabilities"}]});
    let a = server.post("/v2/models/fashion/infer", &body.to_string());
    assert_eq!(a.body["id"], "flat-4");
    assert_eq!(
        a.body["outputs"].as_array().unwrap().len(),
        3,
        "only the outputs asked for"
    );
    assert_predicted(&a.body, &want[24..28].iter().collect::<Vec<_>>());

    // 8 clients at once, one image per request: the worker batches them.
    let before = batches(&server);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (server, images, want) = (&server, &images, &want);
            s.spawn(move || {
                let agent = server::agent();
                let url = format!("{}/v2/models/fashion/infer", server.url);
                for i in (28 + t..256).step_by(8) {
                    let a = server::post(&agent, &url, &image_request(&[&images[i]]));
                    assert_eq!(a.status, 200, "{:?}", a.body);
                    assert_predicted(&a.body, &[&want[i]]);
                }
            });
        }
    });
    let (passes, samples) = batches(&server);
    let (passes, samples) = (passes - before.0, samples - before.1);
    assert_eq!(samples, 228.0, "every image ran once");
    assert!(
        passes < 228.0 / 2.0,
        "{passes} forward passes for 228 concurrent requests: not batched"
    );
    eprintln!("228 concurrent single-image requests ran in {passes} forward passes");
}

/// Forward passes and samples so far, from kiln_batch_size on /metrics.
fn batches(server: &Server) -> (f64, f64) {
    let text = server.text("/metrics");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    (
        value("kiln_batch_size_count{"),
        value("kiln_batch_size_sum{"),
    )
}

#[test]
fn table_models_answer_rows_by_column_name_as_kiln_predict_reads_them() {
    let ex = exports();
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.csv");
    std::fs::write(
        &rows,
        "sex,year,island,body_mass_g,flipper_length_mm,bill_depth_mm,bill_length_mm\n\
         male,2007,Torgersen,3750,181,18.7,39.1\n\
         female,2008,Biscoe,4500,210,NA,46.5\n\
         female,2009,Dream,3500,195,17.9,49.5\n",
    )
    .unwrap();
    let want = predict(&[ex.penguins.to_str().unwrap(), rows.to_str().unwrap()]);
    let diabetes_rows = "datasets/tabular/diabetes.csv";
    let want_d = predict(&[ex.diabetes.to_str().unwrap(), diabetes_rows]);
    let server = Server::start(
        &[ex.penguins.as_path(), ex.diabetes.as_path()],
        &["--name", "penguins", "--name", "diabetes"],
    );

    let meta = server.get("/v2/models/penguins").body;
    let inputs: Vec<(String, String)> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().into(),
                i["datatype"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        inputs.contains(&("island".into(), "BYTES".into())),
        "{inputs:?}"
    );
    assert!(
        inputs.contains(&("bill_length_mm".into(), "FP32".into())),
        "{inputs:?}"
    );

    // Columns in any order; numbers as FP32, text as BYTES, a missing value as a CSV holds it.
    let body = json!({"inputs": [
        {"name": "island", "shape": [3], "datatype": "BYTES", "data": ["Torgersen", "Biscoe", "Dream"]},
        {"name": "sex", "shape": [3], "datatype": "BYTES", "data": ["male", "female", "female"]},
        {"name": "bill_length_mm", "shape": [3], "datatype": "FP32", "data": [39.1, 46.5, 49.5]},
        {"name": "bill_depth_mm", "shape": [3], "datatype": "BYTES", "data": ["18.7", "NA", "17.9"]},
        {"name": "flipper_length_mm", "shape": [3, 1], "datatype": "FP32", "data": [[181], [210], [195]]},
        {"name": "body_mass_g", "shape": [3], "datatype": "FP32", "data": [3750, 4500, 3500]},
        {"name": "year", "shape": [3], "datatype": "FP32", "data": [2007, 2008, 2009]}
    ]});
    let a = server.post("/v2/models/penguins/infer", &body.to_string());
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_predicted(&a.body, &want.iter().collect::<Vec<_>>());
    assert_eq!(
        *output(&a.body, "label"),
        json!(["Adelie", "Gentoo", "Chinstrap"])
    );

    // A category the model never saw, a missing column: 400s that name them.
    let mut bad = body.clone();
    bad["inputs"][0]["data"] = json!(["Torgersen", "Anvers", "Dream"]);
    let a = server.post("/v2/models/penguins/infer", &bad.to_string());
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("request row 1 column `island`: unknown category `Anvers`"),
        "{}",
        a.body
    );
    let mut bad = body.clone();
    bad["inputs"].as_array_mut().unwrap().remove(6);
    let a = server.post("/v2/models/penguins/infer", &bad.to_string());
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("missing input(s) year"),
        "{}",
        a.body
    );

    // The regression: every row of the table, one request, columns as FP32.
    let table = std::fs::read_to_string(repo_root().join(diabetes_rows)).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let cells: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    let inputs: Vec<Value> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != "progression")
        .map(|(j, h)| {
            json!({"name": h, "shape": [cells.len()], "datatype": "FP32",
            "data": cells.iter().map(|r| r[j]).collect::<Vec<_>>()})
        })
        .collect();
    let a = server.post(
        "/v2/models/diabetes/infer",
        &json!({"inputs": inputs}).to_string(),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let got = floats(output(&a.body, "progression"));
    assert_eq!(got.len(), want_d.len());
    for (g, w) in got.iter().zip(&want_d) {
        let w = w["progression"].as_f64().unwrap();
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn a_language_model_generates_what_kiln_predict_generates_for_the_same_seed() {
    let export = &exports().gpt;
    let e = export.to_str().unwrap();
    let server = Server::start(&[export.as_path()], &["--name", "bard"]);
    for (seed, temperature) in [(3, "0.8"), (11, "1.0"), (0, "0")] {
        let want = &predict(&[
            e,
            "ROMEO:",
            "--max-tokens",
            "48",
            "--seed",
            &seed.to_string(),
            "--temperature",
            temperature,
        ])[0];
        let t: f64 = temperature.parse().unwrap();
        let body = json!({"text_input": "ROMEO:", "parameters": {"max_tokens": 48, "seed": seed, "temperature": t}});
        let a = server.post("/v2/models/bard/generate", &body.to_string());
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["text_output"], want["completion"], "seed {seed}");
        assert_eq!(a.body["tokens"], want["tokens"], "seed {seed}");
        // The same through the protocol's infer route, the parameters beside the prompt.
        let body = json!({"parameters": {"max_tokens": 48, "seed": seed, "temperature": t},
            "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["ROMEO:"]}]});
        let a = server.post("/v2/models/bard/infer", &body.to_string());
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(*output(&a.body, "text_output"), json!([want["completion"]]));
    }
    // Streamed as server-sent events: the pieces make the same text, the last event has the
    // tokens.
    let want = &predict(&[e, "ROMEO:", "--max-tokens", "48", "--seed", "3"])[0];
    let body = json!({"text_input": "ROMEO:", "parameters": {"max_tokens": 48, "seed": 3}});
    let response = ureq::post(&format!("{}/v2/models/bard/generate_stream", server.url))
        .send_string(&body.to_string())
        .unwrap();
    assert_eq!(response.content_type(), "text/event-stream");
    let events: Vec<Value> = response
        .into_string()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(events.len() > 2, "{events:?}");
    let text: String = events
        .iter()
        .map(|e| e["text_output"].as_str().unwrap())
        .collect();
    assert_eq!(text, want["completion"].as_str().unwrap());
    let last = events.last().unwrap();
    assert_eq!(
        (&last["finished"], &last["tokens"]),
        (&json!(true), &want["tokens"])
    );

    let bad = [
        (
            json!({"text_input": "ROMEO:", "max_tokens": 0}),
            "parameter `max_tokens`: 0 is not an integer in 1..=4096",
        ),
        (
            json!({"text_input": "ROMEO:", "temprature": 1}),
            "unknown parameter `temprature`",
        ),
        (json!({"text_input": "ROMEO: \u{263a}"}), "the prompt"),
        (
            json!({"prompt": "ROMEO:"}),
            "the request has no `text_input`",
        ),
    ];
    for (body, needle) in bad {
        let a = server.post("/v2/models/bard/generate", &body.to_string());
        assert_eq!(a.status, 400, "{body}: {:?}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains(needle),
            "{body}: {}",
            a.body
        );
    }
}

#[test]
fn exports_written_by_kiln_before_serving_existed_serve_what_they_predicted() {
    let fixtures = repo_root().join("tests/fixtures/v1/exports");
    let names = [
        "wine-mlp",
        "wine-mlp-int8",
        "fashion-mnist-cnn-int4",
        "shakespeare-char-gpt",
    ];
    let dirs: Vec<PathBuf> = names.iter().map(|n| fixtures.join(n)).collect();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let server = Server::start(&refs, &[]);
    let recorded = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(fixtures.join(file))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(fixtures.join("wine-rows.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    for name in ["wine-mlp", "wine-mlp-int8"] {
        let body = json!({"inputs": [{"name": "input", "shape": [rows.len(), 13], "datatype": "FP32", "data": rows}]});
        let a = server.post(&format!("/v2/models/{name}/infer"), &body.to_string());
        assert_eq!(a.status, 200, "{name}: {:?}", a.body);
        let want = recorded(&format!("{name}.predict.jsonl"));
        assert_predicted(&a.body, &want.iter().collect::<Vec<_>>());
    }
    let images = idx_images("tests/fixtures/v1/exports/fashion-test-10-idx3-ubyte", 10);
    let a = server.post(
        "/v2/models/fashion-mnist-cnn-int4/infer",
        &image_request(&images.iter().collect::<Vec<_>>()),
    );
    let want = recorded("fashion-mnist-cnn-int4.predict.jsonl");
    assert_predicted(&a.body, &want.iter().collect::<Vec<_>>());
    let want = &recorded("shakespeare-char-gpt.predict.jsonl")[0];
    let body = json!({"text_input": "ROMEO:", "max_tokens": 40, "temperature": 0});
    let a = server.post(
        "/v2/models/shakespeare-char-gpt/generate",
        &body.to_string(),
    );
    assert_eq!(a.body["text_output"], want["completion"]);
    assert_eq!(a.body["tokens"], want["tokens"]);
    let meta = server.get("/v2/models/wine-mlp-int8").body;
    assert_eq!(
        meta["parameters"],
        json!({"architecture": "mlp", "quantization": "int8", "format_version": 1})
    );
}

#[test]
fn bad_serve_flags_and_requests_are_errors_that_say_what_to_do() {
    let wine = "tests/fixtures/v1/exports/wine-mlp";
    common::fails_with(
        &["serve", wine, wine, "--name", "a"],
        &["--name is given 1 times for 2 exports; name every export, in order, or none"],
    );
    common::fails_with(
        &["serve", wine, wine],
        &["two exports are served as `wine-mlp`; give each its own --name"],
    );
    common::fails_with(
        &["serve", "no/such/export", "--port", "0"],
        &["no/such/export: no such export directory"],
    );
    let server = Server::start(&[repo_root().join(wine).as_path()], &[]);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    common::fails_with(
        &["serve", wine, "--port", &port],
        &[
            &format!("cannot listen on 127.0.0.1:{port}"),
            "choose one with --port",
        ],
    );
    // Triton's binary tensor extension, and a model name that is not UTF-8.
    let refused = ureq::post(&format!("{}/v2/models/wine-mlp/infer", server.url))
        .set("Inference-Header-Content-Length", "10")
        .send_string("{\"inputs\": []}");
    let Err(ureq::Error::Status(400, response)) = refused else {
        panic!("{refused:?}")
    };
    let body: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("binary_data=False"),
        "{body}"
    );
    let a = server.get("/v2/models/%FF");
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .starts_with("the model name in the path"),
        "{}",
        a.body
    );
}
