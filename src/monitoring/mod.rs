//! Monitoring: Prometheus metrics (`tether_` prefix, histograms rather than averages).

mod metrics;

pub use metrics::Metrics;
