use super::*;

fn manifest() -> Manifest {
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        kiln_version: "test".into(),
        architecture: serde_json::json!({"kind": "mlp"}),
        input: serde_json::json!({"shape": [4]}),
        output: serde_json::json!({"labels": ["a", "b"]}),
        quantization: serde_json::json!({"scheme": "int8"}),
        source: serde_json::json!({}),
        metrics: serde_json::json!({}),
        tensors: BTreeMap::new(),
        files: BTreeMap::new(),
        drift: None,
    }
}

fn tensors() -> Vec<(String, ExportTensor)> {
    let w: Vec<f32> = (0..12).map(|i| i as f32 / 7.0 - 0.8).collect();
    vec![
        (
            "l1.weight".into(),
            ExportTensor::quantize(&[4, 3], &w, Some(1), Scheme::Int8).unwrap(),
        ),
        (
            "conv.weight".into(),
            ExportTensor::quantize(&[3, 2, 1, 2], &w, Some(0), Scheme::Int8).unwrap(),
        ),
        (
            "l2.weight".into(),
            ExportTensor::quantize(&[3, 4], &w, Some(1), Scheme::Int4 { block: 2 }).unwrap(),
        ),
        (
            "emb.weight".into(),
            ExportTensor::quantize(&[3, 4], &w, Some(0), Scheme::Int4 { block: 3 }).unwrap(),
        ),
        (
            "l1.bias".into(),
            ExportTensor::F32 {
                shape: vec![3],
                data: vec![0.5, -1.0, 2.0],
            },
        ),
    ]
}

#[test]
fn an_export_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path(), manifest(), &tensors()).unwrap();
    let (m, back) = read_export(dir.path()).unwrap();
    assert_eq!(m.tensors["l2.weight"].block, Some(2));
    let mut expected = tensors();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(back, expected);
}

#[test]
fn quantized_tensors_keep_their_logical_layout() {
    // A [3, 2, 1, 2] "convolution" quantized per output channel (axis 0): channel 0 holds
    // small values, channel 2 large ones; each channel's error stays within half its scale.
    let w: Vec<f32> = (0..12)
        .map(|i| (i as f32 - 5.0) * [0.01, 1.0, 100.0][i / 4])
        .collect();
    for scheme in [Scheme::Int8, Scheme::Int4 { block: 3 }] {
        let t = ExportTensor::quantize(&[3, 2, 1, 2], &w, Some(0), scheme).unwrap();
        let back = t.dequantize();
        let max = if scheme == Scheme::Int8 { 127.0 } else { 7.0 };
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            let channel_max = w[i / 4 * 4..i / 4 * 4 + 4]
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                (a - b).abs() <= channel_max / max / 2.0 * (1.0 + 1e-5),
                "{scheme:?} element {i}: {a} vs {b}"
            );
        }
    }
    let t = ExportTensor::quantize(&[3, 2, 1, 2], &w, Some(0), Scheme::Int8).unwrap();
    let (values, scales) = t.int8_channel_major().unwrap();
    assert_eq!(values, t.int8_values().unwrap());
    assert_eq!(scales.len(), 3);
    let t = ExportTensor::quantize(&[4, 3], &w, Some(1), Scheme::Int8).unwrap();
    let (cm, _) = t.int8_channel_major().unwrap();
    let logical = t.int8_values().unwrap();
    assert_eq!(cm[1], logical[3], "channel 0, row 1");
}

#[test]
fn a_damaged_export_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path(), manifest(), &tensors()).unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = read_export(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("does not match the manifest") && e.contains("export it again"),
        "{e}"
    );
    let e = read_export(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Kiln export"), "{e}");
}
