//! `kiln serve` under load: 10,000 mixed good and bad requests from concurrent clients (every
//! answer checked, /metrics read back with the Prometheus parser, memory flat), the in-flight
//! bound and the request timeout, and SIGTERM while requests are in flight.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{python_with, repo_root};
use crate::server::{self, Server};
use crate::{assert_predicted, exports, idx_images, image_request, predict, FASHION_TEST};

const CLIENTS: usize = 8;
const INFER: &str = "/v2/models/{name}/infer";

/// One request of the mix: where it goes, its body, and the status it must get.
fn request(i: usize, images: &[Vec<f32>]) -> (String, String, u16) {
    let infer = "/v2/models/fashion/infer".to_string();
    let image = &images[i % images.len()];
    match i % 20 {
        0 => (infer, "{\"inputs\": [".into(), 400),
        1 => {
            let body = json!({"inputs": [{"name": "input", "shape": [1, 783], "datatype": "FP32", "data": &image[1..]}]});
            (infer, body.to_string(), 400)
        }
        2 => {
            let body = json!({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "INT64", "data": vec![0; 784]}]});
            (infer, body.to_string(), 400)
        }
        3 => {
            let body = image_request(&[image]).replacen("0.0", "NaN", 1);
            (infer, body, 400)
        }
        4 => ("/v2/models/nope/infer".into(), image_request(&[image]), 404),
        5 => (
            "/v2/model/fashion/infer".into(),
            image_request(&[image]),
            404,
        ),
        // Over the 1 MiB body limit of these servers.
        6 if i % 200 == 6 => (
            infer,
            format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20)),
            413,
        ),
        _ => (infer, image_request(&[image]), 200),
    }
}

/// Sends requests `range` of the mix from CLIENTS threads; checks every answer; counts them by
/// (path, status).
fn send(
    server: &Server,
    range: std::ops::Range<usize>,
    images: &[Vec<f32>],
    want: &[Value],
    sent: &Mutex<BTreeMap<(String, u16), u64>>,
) {
    let next = AtomicUsize::new(range.start);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let agent = server::agent();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= range.end {
                        break;
                    }
                    let (path, body, status) = request(i, images);
                    let a = server::post(&agent, &format!("{}{path}", server.url), &body);
                    assert_eq!(a.status, status, "request {i} to {path}: {:?}", a.body);
                    if status == 200 {
                        assert_predicted(&a.body, &[&want[i % images.len()]]);
                    } else {
                        let error = a.body["error"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{:?}", a.body));
                        assert!(!error.is_empty());
                    }
                    let route = if path.starts_with("/v2/models/") {
                        INFER
                    } else {
                        "unmatched"
                    };
                    *sent
                        .lock()
                        .unwrap()
                        .entry((route.to_string(), status))
                        .or_default() += 1;
                }
            });
        }
    });
}

#[test]
fn ten_thousand_mixed_requests_get_the_right_answers_metrics_count_them_memory_stays_flat() {
    let python = python_with("prometheus_client");
    let export = &exports().fashion;
    let want = predict(&[export.to_str().unwrap(), FASHION_TEST]);
    let images = idx_images(FASHION_TEST, 100);
    let server = Server::start(&[export.as_path()], &["--max-body-mb", "1"]);
    let sent = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    send(&server, 0..2000, &images, &want, &sent);
    let rss_2k = server.rss();
    send(&server, 2000..10_000, &images, &want, &sent);
    let rss_10k = server.rss();
    let took = started.elapsed();
    eprintln!(
        "10,000 requests in {:.1} s; RSS {:.1} MB after 2k, {:.1} MB after 10k",
        took.as_secs_f64(),
        rss_2k as f64 / 1e6,
        rss_10k as f64 / 1e6
    );
    assert!(
        rss_10k < rss_2k + 20_000_000,
        "RSS grew from {rss_2k} to {rss_10k} bytes between 2k and 10k requests"
    );
    assert!(
        server.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        server.log()
    );

    // /metrics, read by the Prometheus project's own parser.
    let Some(python) = python else { return };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), server.text("/metrics")).unwrap();
    let o = Command::new(python)
        .arg("tests/python/check_metrics.py")
        .arg(file.path())
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let parsed: Value = serde_json::from_slice(&o.stdout).unwrap();
    let families = &parsed["families"];
    let samples = |family: &str, name: &str| -> Vec<Value> {
        families[family]["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family}"))
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    };
    let count = |family: &str, name: &str, route: &str, status: u16| -> f64 {
        samples(family, name)
            .iter()
            .filter(|s| {
                s["labels"]["route"] == route
                    && s["labels"]["status"].as_str() == Some(status.to_string().as_str())
            })
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(families["kiln_http_requests"]["type"], "counter");
    assert_eq!(
        families["kiln_http_request_duration_seconds"]["type"],
        "histogram"
    );
    for ((route, status), n) in sent.lock().unwrap().iter() {
        let n = *n as f64;
        assert_eq!(
            count(
                "kiln_http_requests",
                "kiln_http_requests_total",
                route,
                *status
            ),
            n,
            "{route} {status}"
        );
        let histogram = "kiln_http_request_duration_seconds";
        assert_eq!(
            count(histogram, &format!("{histogram}_count"), route, *status),
            n,
            "{route} {status}"
        );
    }
    // Good requests are labelled with their model; the unknown model's with none.
    let good = samples("kiln_http_requests", "kiln_http_requests_total")
        .into_iter()
        .find(|s| s["labels"]["status"] == "200" && s["labels"]["route"] == INFER)
        .unwrap();
    assert_eq!(good["labels"]["model"], "fashion");
    let batch = samples("kiln_batch_size", "kiln_batch_size_sum");
    let good_count = sent.lock().unwrap()[&(INFER.to_string(), 200)] as f64;
    assert_eq!(
        batch[0]["value"].as_f64().unwrap(),
        good_count,
        "samples run = good requests"
    );
    let info = samples("kiln_model_info", "kiln_model_info");
    assert_eq!(info[0]["labels"]["architecture"], "cnn");
    assert_eq!(info[0]["labels"]["backend"], "flex");
    for family in [
        "kiln_queue_duration_seconds",
        "kiln_inference_duration_seconds",
    ] {
        assert_eq!(families[family]["type"], "histogram", "{family}");
    }
    assert_eq!(families["kiln_requests_in_flight"]["type"], "gauge");
}

/// The in-flight gauge of `model` on /metrics.
fn in_flight(server: &Server, model: &str) -> f64 {
    let text = server.text("/metrics");
    let prefix = format!("kiln_requests_in_flight{{model=\"{model}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits (10 s at most) until `model` has `n` requests in flight.
fn wait_in_flight(server: &Server, model: &str, n: f64) {
    let started = Instant::now();
    while in_flight(server, model) < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never {n} in flight"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn over_the_in_flight_bound_is_503_and_past_the_timeout_504_and_the_server_keeps_serving() {
    let export = &exports().slow_gpt;
    let server = Server::start(
        &[export.as_path()],
        &[
            "--name",
            "bard",
            "--max-in-flight",
            "1",
            "--timeout-ms",
            "500",
        ],
    );
    let long = json!({"text_input": "ROMEO:", "max_tokens": 2000}).to_string();
    std::thread::scope(|s| {
        let slow = s.spawn(|| server.post("/v2/models/bard/generate", &long));
        wait_in_flight(&server, "bard", 1.0);
        let a = server.post(
            "/v2/models/bard/generate",
            &json!({"text_input": "A", "max_tokens": 1}).to_string(),
        );
        assert_eq!(a.status, 503, "{:?}", a.body);
        assert!(
            a.body["error"]
                .as_str()
                .unwrap()
                .contains("--max-in-flight"),
            "{:?}",
            a.body
        );
        let a = slow.join().unwrap();
        assert_eq!(a.status, 504, "{:?}", a.body);
        assert!(
            a.body["error"]
                .as_str()
                .unwrap()
                .contains("no answer within 500 ms (--timeout-ms)"),
            "{:?}",
            a.body
        );
    });
    // Still serving, at once: the abandoned generation stopped at its next token instead of
    // running its 2000 tokens (seconds) in front of this request.
    let started = Instant::now();
    let a = server.post(
        "/v2/models/bard/generate",
        &json!({"text_input": "A", "max_tokens": 1}).to_string(),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.get("/v2/health/live").body, json!({"live": true}));
}

#[test]
fn sigterm_under_load_answers_every_request_in_flight_and_exits_0() {
    let export = &exports().slow_gpt;
    let server = Server::start(&[export.as_path()], &["--name", "bard"]);
    let body = json!({"text_input": "ROMEO:", "max_tokens": 60, "temperature": 0}).to_string();
    let url = format!("{}/v2/models/bard/generate", server.url);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| s.spawn(|| server::post(&server::agent(), &url, &body)))
            .collect();
        wait_in_flight(&server, "bard", 4.0);
        let url = server.url.clone();
        let status = server.terminate();
        assert!(status.success(), "exit status {status:?}");
        for c in clients {
            let a = c.join().unwrap();
            assert_eq!(a.status, 200, "{:?}", a.body);
            assert_eq!(a.body["tokens"].as_array().unwrap().len(), 60);
        }
        assert!(
            ureq::get(&format!("{url}/v2/health/live")).call().is_err(),
            "still accepting"
        );
    });
}
