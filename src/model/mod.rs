//! The model: a Llama-family transformer that serves and trains, its tokenizer, chat
//! template, sampling, LoRA adapters and loading.
//!
//! Nothing here knows about HTTP; generation reports text through callbacks.

pub(crate) mod blockq;
pub mod cache;
pub mod config;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod rope;
mod sampler;
pub mod template;
pub mod tokenizer;
mod vexp;
pub mod weights;

pub use cache::KvCache;
pub use config::{Architecture, LlamaConfig, RopeLayout, RopeScaling};
pub use error::{Error, Result};
pub use generate::{
    generate, Completion, FinishReason, Generation, SamplingParams, Step, TokenLogprob,
};
pub use llama::{Llama, Mode, Outputs, SeqInput, Tap};
pub use loader::{default_device, LoadOptions, LoadedModel, ModelInfo, ModelSpec};
pub use lora::{Dropout, LoraAdapter, LoraConfig, LoraPair, Target};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{DecodeStream, Tokenizer};
pub use weights::ComputePath;
