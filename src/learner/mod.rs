//! The learner: the only code that changes what the model computes, and only by
//! training LoRA adapters; base weights are never written.
//!
//! - [`objective`]: every loss from one packed forward pass (SFT on corrections, DPO on
//!   preferences, KTO on ratings, KL to the base on anchor texts, L2-SP).
//! - [`train`]: one reproducible run from a parent adapter and a training set.
//! - [`eval`]: batched greedy decoding, closeness to the base on probes, retention.
//! - [`service`]: the background [`Learner`]: triggers, training sets from feedback,
//!   versions with manifests; candidates go to the rollout gate
//!   ([`crate::rollout::Gate`]) before they serve.
//! - [`sft`]: plain supervised fine-tuning (model benches and tests).

pub mod config;
pub mod eval;
pub mod objective;
pub mod service;
pub mod sft;
pub mod train;

pub use config::LearnerConfig;
pub use objective::Pair;
pub use service::{Error, Learner, Overrides};
pub use sft::{sft_loss, SftExample, SftTrainer};
pub use train::{
    train, AnchorCache, Correction, Hyper, Outcome, Preference, Rated, StepLog, TrainSet,
};
