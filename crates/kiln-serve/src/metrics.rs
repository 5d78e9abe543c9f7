//! `/metrics`: what Prometheus scrapes, in the OpenMetrics text format. Every name starts with
//! `kiln_`; the README's "Serving" section lists them with their labels.
//!
//! Latencies are histograms with explicit buckets, so that `histogram_quantile` gives p50/p99
//! over any window; the `model` label is always one of the served models (a request that names
//! no served model is counted under `model=""`), so the series stay bounded whatever clients send.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod drift;
pub use drift::{DriftMetrics, FeatureLabels};

/// Seconds: from half a millisecond (a small model's forward pass) to a minute (a long
/// generation).
const SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Samples per forward pass.
const BATCH_SIZES: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The served model the request named, or "".
    pub model: String,
    /// The route's template, e.g. `/v2/models/{name}/infer` (`unmatched` for a 404 route).
    pub route: String,
    /// The HTTP status of the response.
    pub status: String,
}

/// The label of per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The served model's name.
    pub model: String,
}

/// What `kiln_model_info` says about a served model (its value is always 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// The served model's name.
    pub model: String,
    /// `cnn`, `mlp`, `resnet`, `gpt`, ...
    pub architecture: String,
    /// `classifier`, `regression` or `language`.
    pub task: String,
    /// `none`, `int8` or `int4`.
    pub quantization: String,
    /// The export's format version.
    pub format_version: String,
    /// The backend it runs on.
    pub backend: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The server's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RequestLabels>,
    queue_seconds: Histograms<ModelLabels>,
    inference_seconds: Histograms<ModelLabels>,
    batch_size: Histograms<ModelLabels>,
    in_flight: Family<ModelLabels, Gauge>,
    generated_tokens: Family<ModelLabels, Counter>,
    model_info: Family<InfoLabels, Gauge>,
    /// Drift per model and feature.
    pub drift: DriftMetrics,
}

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

fn batch_sizes() -> Histogram {
    Histogram::new(BATCH_SIZES)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under the `kiln_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds),
            queue_seconds: Family::new_with_constructor(seconds),
            inference_seconds: Family::new_with_constructor(seconds),
            batch_size: Family::new_with_constructor(batch_sizes),
            in_flight: Family::default(),
            generated_tokens: Family::default(),
            model_info: Family::default(),
            drift: DriftMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by model, route and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response, by model, route and status",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        registry.register_with_unit(
            "queue_duration",
            "Time a request waited for its model's worker (the batching delay included)",
            Unit::Seconds,
            m.queue_seconds.clone(),
        );
        registry.register_with_unit(
            "inference_duration",
            "Time of one forward pass over a batch (or of one generation)",
            Unit::Seconds,
            m.inference_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Samples per forward pass",
            m.batch_size.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Inference requests received and not yet answered",
            m.in_flight.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated by a language model",
            m.generated_tokens.clone(),
        );
        registry.register(
            "model_info",
            "The served models (value 1): architecture, task, quantization, export format version, backend",
            m.model_info.clone(),
        );
        m.drift.register(&mut registry);
        Self { registry, ..m }
    }

    /// Counts a response.
    pub fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.request_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// A request of `model` waited `waited` in its queue.
    pub fn observe_queue(&self, model: &str, waited: Duration) {
        self.queue_seconds
            .get_or_create(&model_label(model))
            .observe(waited.as_secs_f64());
    }

    /// A forward pass of `samples` samples (or one generation) took `took`.
    pub fn observe_batch(&self, model: &str, samples: usize, took: Duration) {
        let label = model_label(model);
        self.inference_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.batch_size
            .get_or_create(&label)
            .observe(samples as f64);
    }

    /// `model` generated `tokens` tokens.
    pub fn generated_tokens(&self, model: &str, tokens: usize) {
        self.generated_tokens
            .get_or_create(&model_label(model))
            .inc_by(tokens as u64);
    }

    /// The in-flight gauge of `model` (the caller increments and decrements it).
    pub fn in_flight(&self, model: &str) -> Gauge {
        self.in_flight.get_or_create_owned(&model_label(model))
    }

    /// Publishes a served model's `kiln_model_info` and creates its per-model series at zero,
    /// so that a dashboard shows the model before its first request.
    pub fn model_loaded(&self, info: InfoLabels) {
        let label = model_label(&info.model);
        let _ = self.in_flight.get_or_create(&label);
        let _ = self.queue_seconds.get_or_create(&label);
        let _ = self.inference_seconds.get_or_create(&label);
        let _ = self.batch_size.get_or_create(&label);
        self.model_info.get_or_create(&info).set(1);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn model_label(model: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.observe_request(
            RequestLabels {
                model: "mnist".into(),
                route: "/v2/models/{name}/infer".into(),
                status: "200".into(),
            },
            Duration::from_millis(3),
        );
        m.observe_batch("mnist", 5, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains("kiln_http_requests_total{model=\"mnist\",route=\"/v2/models/{name}/infer\",status=\"200\"} 1"), "{text}");
        assert!(
            text.contains("kiln_http_request_duration_seconds_bucket{le=\"0.005\",model=\"mnist\""),
            "{text}"
        );
        assert!(
            text.contains("kiln_batch_size_bucket{le=\"4.0\",model=\"mnist\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kiln_batch_size_bucket{le=\"8.0\",model=\"mnist\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
