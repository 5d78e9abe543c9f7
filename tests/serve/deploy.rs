//! configs/serving/ against a running server: every metric the Grafana dashboard queries is one
//! that /metrics exposes, and the Kubernetes probes' paths answer 200 once the server is ready.

use serde_json::Value;

use crate::common::repo_root;
use crate::server::Server;
use crate::{exports, idx_images, image_request, FASHION_TEST};

fn config(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("configs/serving").join(name)).unwrap()
}

/// Every `kiln_...` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("kiln_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_dashboard_queries_metrics_the_server_exposes_and_the_probes_answer() {
    let export = &exports().fashion;
    let server = Server::start(&[export.as_path()], &[]);
    let image = &idx_images(FASHION_TEST, 1)[0];
    assert_eq!(
        server
            .post("/v2/models/fashion/infer", &image_request(&[image]))
            .status,
        200
    );
    let exposed = server.text("/metrics");

    let dashboard: Value = serde_json::from_str(&config("grafana-dashboard.json")).unwrap();
    let mut exprs = String::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_lowercase());
        for target in panel["targets"].as_array().unwrap() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for wanted in [
        "request rate",
        "error rate",
        "latency p50 / p99",
        "batch size",
    ] {
        assert!(
            titles.iter().any(|t| t == wanted),
            "no panel {wanted}: {titles:?}"
        );
    }
    let queried = metric_names(&exprs);
    assert!(queried.len() >= 6, "{queried:?}");
    for name in &queried {
        assert!(
            exposed.contains(&format!("\n{name}{{")) || exposed.contains(&format!("\n{name} ")),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }

    let k8s = config("kubernetes.yaml");
    let paths: Vec<&str> = k8s
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .collect();
    assert!(
        paths.contains(&"/v2/health/ready") && paths.contains(&"/v2/health/live"),
        "{paths:?}"
    );
    for path in paths {
        let status = ureq::get(&format!("{}{path}", server.url))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    assert!(config("prometheus.yml").contains("metrics_path: /metrics"));
    assert!(config("Dockerfile").contains("ENTRYPOINT [\"kiln\", \"serve\""));
}
