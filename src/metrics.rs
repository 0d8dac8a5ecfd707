//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each `Auth` has a recorder of its own rather than the process-wide one of the `metrics`
//! crate, so that several Keyholds in one process (integration tests) keep their own figures.
//! Label values come from closed sets (root fields of the schema, event names, error codes),
//! never from what a client sends.

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Seconds: from half a millisecond (a token check) to a few seconds (a queue of sign-ins).
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&LATENCY_BUCKETS) {
            Ok(builder) => builder,
            // Only an empty list is refused, and ours is not empty.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder, handle };
        metrics.describe();
        metrics.gauge(
            "keyhold_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        metrics
    }

    fn describe(&self) {
        let help: [(&'static str, Option<Unit>, &'static str); 16] = [
            (
                "keyhold_graphql_requests_total",
                None,
                "GraphQL requests by root field and outcome",
            ),
            (
                "keyhold_graphql_request_duration_seconds",
                Some(Unit::Seconds),
                "GraphQL request time by root field",
            ),
            (
                "keyhold_sign_ins_total",
                None,
                "Password sign-ins: ok, failed, or waiting for a second factor",
            ),
            (
                "keyhold_codes_total",
                None,
                "Second-factor codes: sent, accepted, refused",
            ),
            (
                "keyhold_rate_limited_total",
                None,
                "Requests refused by an abuse limit",
            ),
            (
                "keyhold_auth_events_total",
                None,
                "Every audited event by name and outcome",
            ),
            (
                "keyhold_password_hashes_in_use",
                None,
                "argon2 hashes running or queued now",
            ),
            (
                "keyhold_mail_queue_depth",
                None,
                "Messages waiting in the mail queue",
            ),
            (
                "keyhold_mail_sent_total",
                None,
                "Messages handed to the transport",
            ),
            (
                "keyhold_mail_retries_total",
                None,
                "Failed sends that will be tried again",
            ),
            (
                "keyhold_mail_dropped_total",
                None,
                "Messages given up after mail.max_attempts",
            ),
            (
                "keyhold_sweeper_removed_total",
                None,
                "Expired records removed by the sweeper",
            ),
            (
                "keyhold_store_flush_requests_total",
                None,
                "Writes that waited until they were on disk",
            ),
            (
                "keyhold_store_flushes_total",
                None,
                "Log flushes (a write and an fsync each) that covered them; several writes share one",
            ),
            ("keyhold_device_sessions", None, "Signed-in device sessions"),
            ("keyhold_build_info", None, "The running version"),
        ];
        for (name, unit, text) in help {
            let name = KeyName::from_const_str(name);
            let text = SharedString::const_str(text);
            if name.as_str().ends_with("_total") {
                self.recorder.describe_counter(name, unit, text);
            } else if name.as_str().ends_with("_seconds") {
                self.recorder.describe_histogram(name, unit, text);
            } else {
                self.recorder.describe_gauge(name, unit, text);
            }
        }
    }

    /// Adds one to a counter.
    pub fn count(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
            .increment(1);
    }

    /// Sets a counter kept elsewhere (the mail worker's and the sweeper's figures).
    pub fn set_counter(&self, name: &'static str, value: u64) {
        self.recorder
            .register_counter(&key(name, &[]), &METADATA)
            .absolute(value);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
            .record(value);
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder
            .register_gauge(&key(name, labels), &METADATA)
            .set(value);
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}
