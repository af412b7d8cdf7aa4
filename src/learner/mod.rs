//! The learner: the only code that changes what the model computes, and only by
//! training LoRA adapters; base weights are never written.
//!
//! Today this holds supervised fine-tuning on corrections ([`sft`]); scheduling,
//! preference losses and regularisation toward the base arrive with the learner issue.

pub mod sft;

pub use sft::{sft_loss, SftExample, SftTrainer};
