//! Tether: a versioned chat-model server that keeps learning from its users while
//! staying tethered to a trusted baseline.
//!
//! # Layout
//!
//! - [`model`]: the Llama-family transformer (serving and training paths), tokenizer,
//!   chat template, sampling, LoRA adapters, loading and fetching the default model.
//! - [`learner`]: trains LoRA adapters; the only code that changes what the model says.
//! - [`config`]: layered configuration (`configs/default.toml`, file, env, flags).
//! - [`cli`]: the `tether` command line.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod learner;
pub mod model;
