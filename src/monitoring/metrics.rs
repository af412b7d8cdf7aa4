//! Every metric Tether exports, registered once in its own registry.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Handles to every metric; cheap to clone through an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by endpoint and status code.
    pub http_requests: IntCounterVec,
    /// End-to-end request latency by endpoint.
    pub request_duration: HistogramVec,
    /// Admission to first generated token, by version.
    pub time_to_first_token: HistogramVec,
    /// Time between consecutive tokens of a sequence, by version.
    pub inter_token_latency: HistogramVec,
    /// Time requests spend waiting for a batch slot.
    pub queue_wait: Histogram,
    /// Requests waiting for a slot.
    pub queue_length: IntGauge,
    /// Sequences in the running batch.
    pub running_sequences: IntGauge,
    /// Prompt tokens processed, by version.
    pub prompt_tokens: IntCounterVec,
    /// Tokens generated, by version.
    pub generated_tokens: IntCounterVec,
    /// Sequences per forward pass.
    pub batch_size: Histogram,
    /// Forward steps run as two half-batches side by side.
    pub split_steps: IntCounter,
    /// Bytes allocated for KV caches of running sequences.
    pub kv_cache_bytes: IntGauge,
    /// Prefix-cache lookups by result (`hit`, `miss`).
    pub prefix_cache: IntCounterVec,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub prefix_cache_tokens: IntCounter,
    /// Bytes held by the prefix cache.
    pub prefix_cache_bytes: IntGauge,
    /// Seconds the model took to load.
    pub model_load_seconds: prometheus::Gauge,
    /// Response-cache lookups by result (`hit`, `miss`).
    pub response_cache: IntCounterVec,
    /// Safety verdicts by category, action and direction (`none`/`allow` when clean).
    pub safety_verdicts: IntCounterVec,
    /// Time the safety cascade takes per check.
    pub safety_latency: HistogramVec,
    /// Safety-folder reloads by result (`ok`, `error`).
    pub safety_reloads: IntCounterVec,
    /// Items waiting for human review.
    pub review_queue_length: IntGauge,
    /// Requests answered without the model because the prompt was blocked or held.
    pub prompts_withheld: IntCounter,
    /// Conversations written to the log.
    pub conversations_logged: IntCounter,
    /// Conversations deleted by the retention job.
    pub retention_deleted: IntCounter,
    /// End-user erasures performed.
    pub erasures: IntCounter,
    /// Feedback items by kind and status at intake.
    pub feedback: IntCounterVec,
    /// Feedback quarantined, by reason.
    pub feedback_quarantined: IntCounterVec,
    /// Sources per reliability band (`0.0-0.2` … `0.8-1.0`).
    pub source_reliability: prometheus::IntGaugeVec,
    /// Training runs by outcome (`promoted`, `rejected`, `failed`, `reproduced`).
    pub learner_runs: IntCounterVec,
    /// Optimisation steps taken.
    pub learner_steps: IntCounter,
    /// Tokens processed by training steps.
    pub learner_tokens: IntCounter,
    /// Loss of the latest step.
    pub learner_loss: prometheus::Gauge,
    /// Mean KL to the base per anchor token at the latest step.
    pub learner_kl: prometheus::Gauge,
    /// KL to the base on held-out probes of the latest candidate.
    pub learner_probe_kl: prometheus::Gauge,
    /// Feedback items trained on, by kind and role (`new`, `replay`).
    pub learner_feedback: IntCounterVec,
    /// Seconds from a feedback item's acceptance to a version serving it.
    pub feedback_to_serving: Histogram,
    /// Candidates evaluated by the gate, by result (`passed`, `rejected`).
    pub gate_evaluations: IntCounterVec,
    /// Gate checks that failed, by check.
    pub gate_check_failures: IntCounterVec,
    /// Changes of the serving version by action (`promote`, `rollback`) and actor
    /// (`operator`, `learner`, `canary`, `drift-monitor`).
    pub version_switches: IntCounterVec,
    /// Automatic rollbacks by the drift monitor, by condition.
    pub drift_rollbacks: IntCounterVec,
    /// Canary analyses by result (`pass`, `fail`, `inconclusive`).
    pub canary_analyses: IntCounterVec,
    /// Canaries ended, by outcome (`promoted`, `aborted`).
    pub canary_outcomes: IntCounterVec,
    /// Live signals of versions over the drift window, by version and signal
    /// (`flag_rate`, `refusal_rate`, `mean_rating`, `mean_chars`, `shadow_kl`).
    pub live_signal: prometheus::GaugeVec,
    /// 1 for the serving version, by version.
    pub version_serving: prometheus::IntGaugeVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let h = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(latency_buckets());
        Ok(Self {
            http_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_http_requests_total",
                    "HTTP requests by endpoint and status code."
                ),
                &["endpoint", "status"]
            )?),
            request_duration: reg!(HistogramVec::new(
                h(
                    "tether_request_duration_seconds",
                    "End-to-end HTTP request latency."
                ),
                &["endpoint"]
            )?),
            time_to_first_token: reg!(HistogramVec::new(
                h(
                    "tether_time_to_first_token_seconds",
                    "Time from admission to the first generated token."
                ),
                &["version"]
            )?),
            inter_token_latency: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tether_inter_token_latency_seconds",
                    "Time between consecutive generated tokens."
                )
                .buckets(vec![
                    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56
                ]),
                &["version"]
            )?),
            queue_wait: reg!(Histogram::with_opts(h(
                "tether_queue_wait_seconds",
                "Time requests wait for a batch slot."
            ))?),
            queue_length: reg!(IntGauge::new(
                "tether_queue_length",
                "Requests waiting for a batch slot."
            )?),
            running_sequences: reg!(IntGauge::new(
                "tether_running_sequences",
                "Sequences in the running batch."
            )?),
            prompt_tokens: reg!(IntCounterVec::new(
                Opts::new("tether_prompt_tokens_total", "Prompt tokens processed."),
                &["version"]
            )?),
            generated_tokens: reg!(IntCounterVec::new(
                Opts::new("tether_generated_tokens_total", "Tokens generated."),
                &["version"]
            )?),
            batch_size: reg!(Histogram::with_opts(
                HistogramOpts::new("tether_batch_size", "Sequences per forward pass.")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
            )?),
            split_steps: reg!(IntCounter::new(
                "tether_split_steps_total",
                "Forward steps run as two half-batches side by side, one per thread."
            )?),
            kv_cache_bytes: reg!(IntGauge::new(
                "tether_kv_cache_bytes",
                "Bytes allocated for the KV caches of running sequences."
            )?),
            prefix_cache: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_prefix_cache_requests_total",
                    "Prefix-cache lookups by result."
                ),
                &["result"]
            )?),
            prefix_cache_tokens: reg!(IntCounter::new(
                "tether_prefix_cache_reused_tokens_total",
                "Prompt tokens whose keys and values came from the prefix cache."
            )?),
            prefix_cache_bytes: reg!(IntGauge::new(
                "tether_prefix_cache_bytes",
                "Bytes of keys and values held by the prefix cache."
            )?),
            model_load_seconds: reg!(prometheus::Gauge::new(
                "tether_model_load_seconds",
                "Seconds the serving model took to load."
            )?),
            response_cache: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_response_cache_requests_total",
                    "Response-cache lookups by result."
                ),
                &["result"]
            )?),
            safety_verdicts: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_safety_verdicts_total",
                    "Safety verdicts by category, action and direction."
                ),
                &["category", "action", "direction"]
            )?),
            safety_latency: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tether_safety_check_seconds",
                    "Time the safety cascade takes per check."
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05
                ]),
                &["direction"]
            )?),
            safety_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_safety_reloads_total",
                    "Safety-folder reloads by result."
                ),
                &["result"]
            )?),
            review_queue_length: reg!(IntGauge::new(
                "tether_review_queue_length",
                "Escalated items waiting for human review."
            )?),
            prompts_withheld: reg!(IntCounter::new(
                "tether_safety_prompts_withheld_total",
                "Requests answered without running the model because of the input policy."
            )?),
            conversations_logged: reg!(IntCounter::new(
                "tether_conversations_logged_total",
                "Conversations written to the log (consenting, sampled, anonymized)."
            )?),
            retention_deleted: reg!(IntCounter::new(
                "tether_retention_deleted_total",
                "Logged conversations deleted because their retention ran out."
            )?),
            erasures: reg!(IntCounter::new(
                "tether_user_erasures_total",
                "End-user data erasures performed."
            )?),
            feedback: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_feedback_total",
                    "Feedback items by kind and status at intake."
                ),
                &["kind", "status"]
            )?),
            feedback_quarantined: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_feedback_quarantined_total",
                    "Feedback items quarantined, by reason."
                ),
                &["reason"]
            )?),
            source_reliability: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tether_feedback_sources",
                    "Feedback sources per learned-reliability band."
                ),
                &["reliability"]
            )?),
            learner_runs: reg!(IntCounterVec::new(
                Opts::new("tether_learner_runs_total", "Training runs by outcome."),
                &["outcome"]
            )?),
            learner_steps: reg!(IntCounter::new(
                "tether_learner_steps_total",
                "Optimisation steps taken by the learner."
            )?),
            learner_tokens: reg!(IntCounter::new(
                "tether_learner_tokens_total",
                "Tokens processed by training steps."
            )?),
            learner_loss: reg!(prometheus::Gauge::new(
                "tether_learner_loss",
                "Total loss of the latest training step."
            )?),
            learner_kl: reg!(prometheus::Gauge::new(
                "tether_learner_anchor_kl",
                "Mean KL to the base model per anchor token at the latest training step."
            )?),
            learner_probe_kl: reg!(prometheus::Gauge::new(
                "tether_learner_probe_kl",
                "Mean KL to the base model per token on held-out probes, latest candidate."
            )?),
            learner_feedback: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_learner_feedback_total",
                    "Feedback items trained on, by kind and role (new or replayed)."
                ),
                &["kind", "role"]
            )?),
            feedback_to_serving: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "tether_feedback_to_serving_seconds",
                    "Seconds from a feedback item's acceptance to a version trained on it serving."
                )
                .buckets(vec![
                    5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                    86400.0
                ])
            )?),
            gate_evaluations: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_gate_evaluations_total",
                    "Candidate versions evaluated by the gate, by result."
                ),
                &["result"]
            )?),
            gate_check_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_gate_check_failures_total",
                    "Gate checks failed by candidates, by check."
                ),
                &["check"]
            )?),
            version_switches: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_version_switches_total",
                    "Changes of the serving version, by action and actor."
                ),
                &["action", "actor"]
            )?),
            drift_rollbacks: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_drift_rollbacks_total",
                    "Automatic rollbacks by the drift monitor, by failed condition."
                ),
                &["condition"]
            )?),
            canary_analyses: reg!(IntCounterVec::new(
                Opts::new("tether_canary_analyses_total", "Canary analyses by result."),
                &["result"]
            )?),
            canary_outcomes: reg!(IntCounterVec::new(
                Opts::new(
                    "tether_canary_outcomes_total",
                    "Canaries ended, by outcome."
                ),
                &["outcome"]
            )?),
            live_signal: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "tether_live_signal",
                    "Live signals of a version over the drift window, by version and signal."
                ),
                &["version", "signal"]
            )?),
            version_serving: reg!(prometheus::IntGaugeVec::new(
                Opts::new(
                    "tether_version_serving",
                    "1 for the version serving unpinned requests."
                ),
                &["version"]
            )?),
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
