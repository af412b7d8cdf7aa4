//! Tether: a versioned chat-model server that keeps learning from its users while
//! staying tethered to a trusted baseline.
//!
//! # Layout
//!
//! - [`model`]: the Llama-family transformer (serving and training paths), tokenizer,
//!   chat template, sampling, LoRA adapters, loading and fetching the default model.
//! - [`engine`]: continuous batching: one thread runs every admitted sequence together.
//! - [`api`]: the OpenAI-compatible HTTP API (the only module that knows HTTP).
//! - [`server`]: `serve(listener, config, shutdown)`: state, model loading, shutdown.
//! - [`registry`]: immutable, content-hashed model versions; the base is version 1.
//! - [`privacy`]: the anonymizer (before every write), consent, conversation logs.
//! - [`safety`]: classifiers, rules and policy on every prompt and answer (hot-reloaded).
//! - [`storage`]: the SQLite database (versions, completion records, API keys).
//! - [`monitoring`]: Prometheus metrics.
//! - [`feedback`]: corrections, ratings, preferences; source reliability; campaigns.
//! - [`learner`]: trains LoRA adapters; the only code that changes what the model says.
//! - [`rollout`]: the evaluation gate, canary, drift monitor with automatic rollback,
//!   operator promote/rollback/retire.
//! - [`config`]: layered configuration (`configs/default.toml`, file, env, flags).
//! - [`cli`]: the `tether` command line.
//! - [`jsonl`]: JSON Lines in and out for the offline commands.
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod feedback;
pub mod jsonl;
pub mod learner;
pub mod memory;
pub mod model;
pub mod monitoring;
pub mod privacy;
pub mod registry;
pub mod rollout;
pub mod safety;
pub mod server;
pub mod storage;
