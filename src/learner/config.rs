//! The `[learner]` section of the configuration.

use serde::{Deserialize, Serialize};

use super::train::Hyper;
use crate::model::LoraConfig;

/// When and how the learner trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerConfig {
    /// Run the background learner.
    pub enabled: bool,
    /// Train once untrained accepted feedback weighs this much (0: off).
    pub min_weight: f64,
    /// Also train on this interval when any feedback waits (0: off).
    pub schedule_secs: u64,
    /// How often the two conditions are checked.
    pub poll_secs: u64,
    /// Items weighing less are left out.
    pub min_item_weight: f64,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Most steps per run.
    pub max_steps: usize,
    /// Fewest steps per run.
    pub min_steps: usize,
    /// Early-stop probability target for correction tokens.
    pub target_prob: f64,
    /// Weight of the anchor KL.
    pub kl_weight: f64,
    /// Weight of the L2-SP penalty.
    pub l2sp_weight: f64,
    /// DPO β.
    pub dpo_beta: f64,
    /// KTO β.
    pub kto_beta: f64,
    /// Anchors per step.
    pub anchors_per_step: usize,
    /// Earlier corrections replayed per run.
    pub replay: usize,
    /// Weight factor of replayed corrections.
    pub replay_weight: f64,
    /// Seed of every run.
    pub seed: u64,
    /// Anchor prompts file (empty: compiled in).
    pub anchors: String,
    /// Length of the base's greedy answers to anchors and probes.
    pub answer_tokens: usize,
}

impl LearnerConfig {
    /// The hyperparameters of a run with adapter shape `lora`.
    pub fn hyper(&self, lora: &LoraConfig) -> Hyper {
        Hyper {
            lora: lora.clone(),
            learning_rate: self.learning_rate,
            max_steps: self.max_steps,
            min_steps: self.min_steps,
            target_prob: self.target_prob,
            kl_weight: self.kl_weight,
            l2sp_weight: self.l2sp_weight,
            dpo_beta: self.dpo_beta,
            kto_beta: self.kto_beta,
            anchors_per_step: self.anchors_per_step,
            seed: self.seed,
        }
    }
}
