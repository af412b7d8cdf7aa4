//! Integration tests: one binary, one module per capability.
//!
//! Tests that need the real SmolLM2 weights fetch them once into `$TETHER_HOME` (the
//! same cache `tether` uses). Fast tests use tiny random-weight models of the same
//! architecture, written to disk by `common` and loaded through the real loader.

mod bad_input;
mod binary;
mod cli;
mod common;
mod facts;
mod feedback;
mod generation;
mod learner;
mod loading;
mod lora;
mod openai;
mod privacy;
mod probe;
mod rollout;
mod safety;
mod server;
mod smollm;
mod tiny_forward;
mod tokenizer;
