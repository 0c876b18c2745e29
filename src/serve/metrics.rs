//! The server's Prometheus metrics, served as text at `GET /metrics`.
//!
//! One registry per server (not the process-global one), so that tests can run servers side by
//! side. The process collector adds `process_resident_memory_bytes`,
//! `process_cpu_seconds_total` and the rest of the standard process metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Seconds from a query's arrival to its last batch sent (or its error), by protocol.
    pub query_seconds: HistogramVec,
    /// Seconds a job ran (queued time excluded), by final state.
    pub job_seconds: HistogramVec,
    /// Bytes of model tensors read by finished jobs.
    pub job_bytes_in: IntCounter,
    /// Bytes of quantized output written by finished jobs.
    pub job_bytes_out: IntCounter,
    /// Bytes of Arrow data sent to Flight SQL clients.
    pub flight_bytes_out: IntCounter,
    /// Bytes of request bodies received (Flight parameter batches, HTTP job bodies).
    pub request_bytes_in: IntCounter,
    /// Compression ratio of each finished job.
    pub job_compression_ratio: Histogram,
    /// Mean cosine similarity of each finished job.
    pub job_mean_cosine: Histogram,
    /// Errors, by kind (auth, path, limit, plan, execution, bad_request, not_found, job).
    pub errors: IntCounterVec,
    /// Jobs waiting for a slot.
    pub jobs_queued: IntGauge,
    /// Jobs running now.
    pub jobs_running: IntGauge,
    /// Jobs that ended, by final state.
    pub jobs_finished: IntCounterVec,
    /// Queries running now.
    pub queries_running: IntGauge,
    /// Flight SQL requests, by gRPC method (DoGet, GetFlightInfo, DoAction, DoPut, Handshake…).
    pub flight_requests: IntCounterVec,
    /// HTTP requests, by route and status code.
    pub http_requests: IntCounterVec,
}

/// Latency buckets from 1 ms to about 9 minutes: SQL over a small table answers in
/// milliseconds, a whole-model job takes minutes.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 20).expect("static bucket parameters")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let metrics = Metrics {
            query_seconds: histogram_vec(
                "arrowquant_query_duration_seconds",
                "Seconds from a query's arrival to its last batch or its error",
                &["protocol"],
                latency_buckets(),
            ),
            job_seconds: histogram_vec(
                "arrowquant_job_duration_seconds",
                "Seconds a job ran, by final state",
                &["state"],
                latency_buckets(),
            ),
            job_bytes_in: counter(
                "arrowquant_job_input_bytes_total",
                "Bytes of model tensors read by finished jobs",
            ),
            job_bytes_out: counter(
                "arrowquant_job_output_bytes_total",
                "Bytes of quantized output written by finished jobs",
            ),
            flight_bytes_out: counter(
                "arrowquant_flight_bytes_out_total",
                "Bytes of Arrow data sent to Flight SQL clients",
            ),
            request_bytes_in: counter(
                "arrowquant_request_bytes_in_total",
                "Bytes of request bodies received",
            ),
            job_compression_ratio: histogram(
                "arrowquant_job_compression_ratio",
                "Compression ratio (bytes before / after) of each finished job",
                vec![1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0],
            ),
            job_mean_cosine: histogram(
                "arrowquant_job_mean_cosine",
                "Mean cosine similarity of each finished job's quantized rows",
                vec![0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0],
            ),
            errors: counter_vec(
                "arrowquant_errors_total",
                "Errors answered, by kind",
                &["kind"],
            ),
            jobs_queued: gauge("arrowquant_jobs_queued", "Jobs waiting for a slot"),
            jobs_running: gauge("arrowquant_jobs_running", "Jobs running now"),
            jobs_finished: counter_vec(
                "arrowquant_jobs_finished_total",
                "Jobs that ended, by final state",
                &["state"],
            ),
            queries_running: gauge("arrowquant_queries_running", "Queries running now"),
            flight_requests: counter_vec(
                "arrowquant_flight_requests_total",
                "Flight SQL requests, by gRPC method",
                &["method"],
            ),
            http_requests: counter_vec(
                "arrowquant_http_requests_total",
                "HTTP requests, by route and status",
                &["route", "status"],
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        // Every labelled series exists from the start, at zero, so a scrape sees them all.
        for kind in ERROR_KINDS {
            metrics.errors.with_label_values(&[kind]);
        }
        for state in ["done", "failed", "cancelled"] {
            metrics.jobs_finished.with_label_values(&[state]);
        }
        metrics.query_seconds.with_label_values(&["flight"]);
        for method in FLIGHT_METHODS {
            metrics.flight_requests.with_label_values(&[method]);
        }
        metrics
    }

    /// Counts one error of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The kinds of error counted by `arrowquant_errors_total`.
pub const ERROR_KINDS: [&str; 8] = [
    "auth",
    "path",
    "limit",
    "plan",
    "execution",
    "bad_request",
    "not_found",
    "job",
];

/// The gRPC methods a Flight SQL client calls, counted from zero.
const FLIGHT_METHODS: [&str; 6] = [
    "Handshake",
    "GetFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoAction",
];
