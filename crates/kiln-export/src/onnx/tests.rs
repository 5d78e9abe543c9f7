use super::*;
use crate::format::{Quant, Scheme};

mod decode;
mod reference;

use decode::*;
use reference::*;

// ---- Encoding. ----

#[test]
fn an_mlp_encodes_its_layers_in_order() {
    let bytes = classifier_to_onnx(&mlp(Scheme::None)).unwrap();
    let (ir, opset, ops) = summary(&bytes);
    assert_eq!((ir, opset), (8, 17));
    let gelu = ["Div", "Erf", "Add", "Mul", "Mul"];
    let expected: Vec<&str> = [
        &["Sub", "Mul", "Gemm", "Relu", "Gemm", "BatchNormalization"][..],
        &gelu,
        &[
            "Gemm", "Tanh", "Gemm", "Sigmoid", "Flatten", "Gemm", "Softmax",
        ],
    ]
    .concat();
    assert_eq!(ops, expected);
    assert_eq!(string(&bytes, 2), "kiln");
    // The graph's input and outputs by name; the last Gemm writes the logits.
    let graph = messages(&bytes, 7)[0];
    let names = |field| -> Vec<String> {
        messages(graph, field)
            .iter()
            .map(|v| string(v, 1))
            .collect()
    };
    assert_eq!(names(11), ["input"]);
    assert_eq!(names(12), ["logits", "probabilities"]);
    let nodes = messages(graph, 1);
    assert_eq!(string(nodes[nodes.len() - 2], 2), "logits");
    // Float weights only: no quantized initializers.
    let types: Vec<u64> = messages(graph, 5)
        .iter()
        .map(|t| varints(t, 2)[0])
        .collect();
    assert!(types.iter().all(|&t| t == 1), "{types:?}");
}

#[test]
fn quantized_weights_stay_quantized() {
    let bytes = classifier_to_onnx(&cnn(Scheme::Int8)).unwrap();
    let (ir, opset, ops) = summary(&bytes);
    assert_eq!((ir, opset), (8, 17));
    assert_eq!(ops.iter().filter(|o| *o == "DequantizeLinear").count(), 3);
    let graph = messages(&bytes, 7)[0];
    let int8: Vec<Vec<u64>> = messages(graph, 5)
        .iter()
        .filter(|t| varints(t, 2)[0] == 3)
        .map(|t| varints(t, 1))
        .collect();
    // Convolutions in their logical shape, the linear weight channel-major.
    assert_eq!(int8, [vec![4, 2, 3, 3], vec![6, 4, 3, 3], vec![5, 12]]);

    let bytes = classifier_to_onnx(&cnn(Scheme::Int4 { block: 6 })).unwrap();
    let (ir, opset, ops) = summary(&bytes);
    assert_eq!((ir, opset), (10, 21));
    // Each int4 convolution weight is reshaped back to [c_out, c_in, k, k].
    assert_eq!(ops.iter().filter(|o| *o == "Reshape").count(), 3);
    let graph = messages(&bytes, 7)[0];
    let int4: Vec<(Vec<u64>, usize)> = messages(graph, 5)
        .iter()
        .filter(|t| varints(t, 2)[0] == 22)
        .map(|t| (varints(t, 1), messages(t, 9)[0].len()))
        .collect();
    assert_eq!(
        int4,
        [(vec![4, 18], 36), (vec![6, 36], 108), (vec![5, 12], 30)]
    );
    let dq = messages(graph, 1)
        .into_iter()
        .find(|n| string(n, 4) == "DequantizeLinear")
        .unwrap();
    let attrs: Vec<(String, u64)> = messages(dq, 5)
        .iter()
        .map(|a| (string(a, 1), varints(a, 3)[0]))
        .collect();
    assert_eq!(
        attrs,
        [("axis".to_string(), 1), ("block_size".to_string(), 6)]
    );
}

#[test]
fn attributes_carry_their_types() {
    let bytes = classifier_to_onnx(&cnn(Scheme::None)).unwrap();
    let graph = messages(&bytes, 7)[0];
    let conv = messages(graph, 1)
        .into_iter()
        .find(|n| string(n, 4) == "Conv")
        .unwrap();
    let attrs: Vec<(String, Vec<u64>, u64)> = messages(conv, 5)
        .iter()
        .map(|a| (string(a, 1), varints(a, 8), varints(a, 20)[0]))
        .collect();
    assert_eq!(
        attrs,
        [
            ("kernel_shape".to_string(), vec![3, 3], 7),
            ("pads".to_string(), vec![1, 1, 1, 1], 7),
            ("strides".to_string(), vec![1, 1], 7),
        ]
    );
    let bn = messages(graph, 1)
        .into_iter()
        .find(|n| string(n, 4) == "BatchNormalization")
        .unwrap();
    let eps = fields(messages(bn, 5)[0])
        .into_iter()
        .find_map(|(f, v)| match (f, v) {
            (2, Value::Fixed32(bits)) => Some(f32::from_bits(bits)),
            _ => None,
        });
    assert_eq!(eps, Some(1e-5));
    // The batch dimension is symbolic, the features fixed.
    let input = messages(graph, 11)[0];
    let tensor = messages(messages(input, 2)[0], 1)[0];
    let dims = messages(messages(tensor, 2)[0], 1);
    assert_eq!(string(dims[0], 2), "batch");
    assert_eq!(varints(dims[1], 1), [2 * 7 * 9]);
}

#[test]
fn a_net_without_layers_passes_its_input_through() {
    let net = ClassifierNet {
        features: 3,
        image: None,
        standardize: None,
        layers: vec![],
        classes: 3,
        regression: None,
    };
    let (_, _, ops) = summary(&classifier_to_onnx(&net).unwrap());
    assert_eq!(ops, ["Identity", "Softmax"]);
}

#[test]
fn a_regression_ends_in_its_targets_units_without_a_softmax() {
    let net = ClassifierNet {
        features: 1,
        image: None,
        standardize: None,
        layers: vec![],
        classes: 1,
        regression: Some(kiln_models::Regression {
            loss: kiln_models::RegressionLoss::Mse,
            mean: 150.0,
            std: 75.0,
        }),
    };
    let (_, _, ops) = summary(&classifier_to_onnx(&net).unwrap());
    assert_eq!(ops, ["Mul", "Add"]);
}

// ---- Refusals. ----

fn error(net: &ClassifierNet) -> String {
    format!("{:#}", classifier_to_onnx(net).unwrap_err())
}

#[test]
fn inconsistent_nets_are_refused() {
    let mut r = Lcg(3);
    let base = mlp(Scheme::None);

    let mut net = base.clone();
    net.classes = 4;
    let e = error(&net);
    assert!(
        e.contains("end with [3] values") && e.contains("4 classes"),
        "{e}"
    );

    let mut net = base.clone();
    net.layers[2] = linear(&mut r, 7, 8, Scheme::None, true);
    let e = error(&net);
    assert!(
        e.contains("layer 2 (Linear)") && e.contains("takes 7 inputs"),
        "{e}"
    );

    let mut net = base.clone();
    net.standardize = Some(Standardizer {
        mean: vec![0.0; 5],
        std: vec![1.0; 5],
    });
    let e = error(&net);
    assert!(e.contains("standardization has 5 values"), "{e}");

    let mut net = base.clone();
    net.layers[0] = Layer::Linear {
        weight: ExportTensor::F32 {
            shape: vec![6, 8],
            data: vec![0.0; 47],
        },
        bias: None,
    };
    let e = error(&net);
    assert!(e.contains("holds 47 values instead of 48"), "{e}");

    let mut net = base.clone();
    let Layer::Linear { bias, .. } = &mut net.layers[0] else {
        unreachable!()
    };
    *bias = Some(vec![0.0; 3]);
    assert!(error(&net).contains("bias has 3 values for 8 outputs"));

    let mut net = base.clone();
    net.layers[3] = batch_norm(&mut r, 5);
    assert!(error(&net).contains("gamma has 5 values but the input has 8 channels"));

    let mut net = base.clone();
    net.layers.insert(0, Layer::MaxPool2);
    assert!(error(&net).contains("pooling needs an image input"));

    let mut net = cnn(Scheme::None);
    net.image = Some([2, 7, 8]);
    assert!(error(&net).contains("does not hold the 126 input features"));

    let mut net = cnn(Scheme::None);
    net.layers.remove(7);
    let e = error(&net);
    assert!(e.contains("add a Flatten layer"), "{e}");

    let mut net = cnn(Scheme::None);
    net.layers[4] = conv(&mut r, 3, 6, 3, 1, Scheme::None);
    assert!(error(&net).contains("takes 3 input channels but the input has 4"));

    let mut net = cnn(Scheme::None);
    net.layers[4] = conv(&mut r, 4, 6, 5, 0, Scheme::None);
    assert!(error(&net).contains("5x5 kernel does not fit the 3x4 input"));

    // Damaged quantized tensors.
    let mut net = cnn(Scheme::Int8);
    let Layer::Conv2d { weight, .. } = &mut net.layers[0] else {
        unreachable!()
    };
    let ExportTensor::Quant {
        q: Quant::Int8(q), ..
    } = weight
    else {
        unreachable!()
    };
    q.scales.pop();
    assert!(error(&net).contains("expected 72 values and 4 scales"));

    let mut net = cnn(Scheme::Int4 { block: 6 });
    let Layer::Linear { weight, .. } = &mut net.layers[8] else {
        unreachable!()
    };
    let ExportTensor::Quant {
        q: Quant::Int4(q), ..
    } = weight
    else {
        unreachable!()
    };
    q.packed.push(0);
    let e = error(&net);
    assert!(
        e.contains("layer 8 (Linear)") && e.contains("holds 31 bytes"),
        "{e}"
    );
}

// ---- onnxruntime agrees with the host forward pass. ----

/// The Python of the export tests: `$KILN_PYTHON`, or `target/pyenv/bin/python` (made by
/// `tests/python/setup.sh`).
fn python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("KILN_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"))
}

/// Runs `tests/python/check_onnx.py` on a model and its cases; returns whether it passed,
/// its JSON summary and its stderr.
fn run_check(
    model: &std::path::Path,
    cases: &std::path::Path,
) -> (bool, serde_json::Value, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/check_onnx.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(model)
        .arg(cases)
        .args(["--atol", "1e-4"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run tests/python/setup.sh or set KILN_PYTHON",
                python().display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("check_onnx.py printed no JSON ({e}): {stdout}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), summary, stderr)
}

/// Writes `net`'s model and 16 inputs with their host logits to `dir` as `name.onnx` and
/// `name.json`, checks them with onnxruntime and returns the summary.
fn check_with_onnxruntime(
    dir: &std::path::Path,
    name: &str,
    net: &ClassifierNet,
) -> serde_json::Value {
    let mut r = Lcg(99);
    let inputs: Vec<Vec<f32>> = (0..16)
        .map(|_| r.vec(net.features, 1.0).iter().map(|v| v.abs()).collect())
        .collect();
    let logits: Vec<Vec<f32>> = inputs.iter().map(|x| forward(net, x)).collect();
    let model = dir.join(format!("{name}.onnx"));
    let cases = dir.join(format!("{name}.json"));
    std::fs::write(&model, classifier_to_onnx(net).unwrap()).unwrap();
    let json = serde_json::json!({ "inputs": inputs, "logits": logits });
    std::fs::write(&cases, json.to_string()).unwrap();
    let (ok, summary, stderr) = run_check(&model, &cases);
    println!("{name}: {summary}");
    assert!(ok, "{name}: check_onnx.py failed: {stderr}");
    summary
}

#[test]
#[ignore = "needs Python with onnxruntime (tests/python/setup.sh)"]
fn onnxruntime_computes_what_kiln_computes() {
    let dir = tempfile::tempdir().unwrap();
    let schemes = [
        ("f32", Scheme::None, 17),
        ("int8", Scheme::Int8, 17),
        ("int4", Scheme::Int4 { block: 2 }, 21),
    ];
    for (tag, scheme, opset) in schemes {
        let s = check_with_onnxruntime(dir.path(), &format!("mlp_{tag}"), &mlp(scheme));
        assert_eq!(s["opset"], opset);
        assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");
        assert_eq!(s["argmax_agree"], 16);
        // The CNN's int4 blocks: 6 divides K = 18, 36 and 12.
        let scheme = if tag == "int4" {
            Scheme::Int4 { block: 6 }
        } else {
            scheme
        };
        let s = check_with_onnxruntime(dir.path(), &format!("cnn_{tag}"), &cnn(scheme));
        assert_eq!(s["opset"], opset);
        assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");
        assert_eq!(s["argmax_agree"], 16);
    }
    // A block that does not divide K (4 blocks of 5 over 18 values, the last one short).
    let s = check_with_onnxruntime(dir.path(), "cnn_int4_b5", &cnn(Scheme::Int4 { block: 5 }));
    assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");

    // The check notices a wrong model: the int8 CNN against the float CNN's logits.
    let (ok, s, stderr) = run_check(
        &dir.path().join("cnn_int8.onnx"),
        &dir.path().join("cnn_f32.json"),
    );
    println!("int8 model, float logits: {s} {stderr}");
    assert!(
        !ok && s["ok"] == false && stderr.contains("logits differ"),
        "{s}"
    );
}
