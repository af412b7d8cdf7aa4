//! One training run: a LoRA adapter trained from the parent version's adapter (or a
//! fresh one) on a [`TrainSet`], with every objective and regulariser in one loss.
//!
//! The run is a pure function of the model, the parent adapter, the set and the
//! [`Hyper`]parameters (seed included): on CPU, running it again gives the same
//! adapter bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::objective::{self, Pair};
use crate::model::{Error, Llama, LoraAdapter, LoraConfig, Mode, Result};

/// Hyperparameters of a run (recorded in the version's manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyper {
    /// Adapter shape (used when the parent has no adapter).
    pub lora: LoraConfig,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Most optimisation steps.
    pub max_steps: usize,
    /// Fewest steps before the run may stop early.
    pub min_steps: usize,
    /// Stop early once every correction's answer tokens have at least this
    /// probability (greedy decoding then reproduces it with a margin).
    pub target_prob: f64,
    /// Weight of `KL(base ‖ adapted)` per anchor token.
    pub kl_weight: f64,
    /// Weight of the L2-SP penalty `Σ‖θ − θ₀‖²` toward the starting adapter.
    pub l2sp_weight: f64,
    /// DPO temperature β.
    pub dpo_beta: f64,
    /// KTO temperature β.
    pub kto_beta: f64,
    /// Anchor texts in each step (a rotating window over the anchor set).
    pub anchors_per_step: usize,
    /// Seed for the adapter's initialisation and dropout.
    pub seed: u64,
}

/// A correction (or a replayed earlier one): supervised target.
#[derive(Debug, Clone)]
pub struct Correction {
    /// Feedback id.
    pub id: String,
    /// Prompt and corrected answer.
    pub pair: Pair,
    /// Weight in the loss.
    pub weight: f32,
}

/// A preference: `chosen` should become likelier than `rejected`.
#[derive(Debug, Clone)]
pub struct Preference {
    /// Feedback id.
    pub id: String,
    /// Prompt and preferred answer.
    pub chosen: Pair,
    /// Prompt and worse answer.
    pub rejected: Pair,
    /// Weight in the loss.
    pub weight: f32,
}

/// A rated answer: desirable (rated up) or undesirable (rated down).
#[derive(Debug, Clone)]
pub struct Rated {
    /// Feedback id.
    pub id: String,
    /// Prompt and the rated answer.
    pub pair: Pair,
    /// Rated up.
    pub desirable: bool,
    /// Weight in the loss.
    pub weight: f32,
}

/// Everything a run trains on.
#[derive(Debug, Clone, Default)]
pub struct TrainSet {
    /// Corrections, including replayed earlier ones.
    pub corrections: Vec<Correction>,
    /// Preferences.
    pub preferences: Vec<Preference>,
    /// Ratings.
    pub ratings: Vec<Rated>,
    /// Anchor texts for the KL penalty (never feedback).
    pub anchors: Vec<Pair>,
    /// The base's hidden states of exactly these anchors, kept across runs (the
    /// learner's anchors and base never change); computed on first use when absent.
    pub anchor_cache: Option<Arc<AnchorCache>>,
}

/// The base's hidden states of a fixed set of anchors entering each layer where
/// adapters began, computed once ([`objective::hidden_before`]).
#[derive(Debug, Default)]
pub struct AnchorCache {
    layers: Mutex<HashMap<usize, Arc<Vec<Tensor>>>>,
}

impl AnchorCache {
    /// The hidden states of `anchors` entering `layer`, computed on first request.
    pub fn get(&self, model: &Llama, anchors: &[Pair], layer: usize) -> Result<Arc<Vec<Tensor>>> {
        let mut map = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(&layer) {
            if h.len() == anchors.len() {
                return Ok(h.clone());
            }
        }
        let pairs: Vec<&Pair> = anchors.iter().collect();
        let h = Arc::new(objective::hidden_before(model, &pairs, layer)?);
        map.insert(layer, h.clone());
        Ok(h)
    }
}

impl TrainSet {
    /// Whether there is any feedback to learn from.
    pub fn is_empty(&self) -> bool {
        self.corrections.is_empty() && self.preferences.is_empty() && self.ratings.is_empty()
    }
}

/// One step's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// Total loss before the update.
    pub loss: f32,
    /// Supervised part.
    pub sft: f32,
    /// DPO part.
    pub dpo: f32,
    /// KTO part.
    pub kto: f32,
    /// Mean KL to the base per anchor token.
    pub kl: f32,
    /// L2-SP penalty (unweighted).
    pub l2sp: f32,
    /// Share of corrections that greedy decoding reproduces.
    pub learned: f32,
    /// Tokens in the step's packed batch.
    pub tokens: usize,
    /// Seconds the step took.
    pub secs: f32,
}

/// What a run produced.
pub struct Outcome {
    /// The trained adapter, frozen.
    pub adapter: LoraAdapter,
    /// One entry per step.
    pub steps: Vec<StepLog>,
}

/// Trains an adapter. `progress` is called after every step and stops the run when it
/// returns `false` (cancellation), which is an error.
pub fn train(
    model: &Llama,
    parent: Option<&LoraAdapter>,
    set: &TrainSet,
    h: &Hyper,
    mut progress: impl FnMut(&StepLog) -> bool,
) -> Result<Outcome> {
    if set.is_empty() {
        return Err(Error::InvalidArgument("nothing to train on".into()));
    }
    let adapter = match parent {
        Some(p) => p.to_trainable()?,
        None => LoraAdapter::new_trainable(&h.lora, model.config(), h.seed, model.device())?,
    };
    let start: Vec<Tensor> = adapter
        .vars()
        .iter()
        .map(|v| v.as_tensor().detach().copy())
        .collect::<candle_core::Result<_>>()?;
    let mut opt = AdamW::new(
        adapter.vars().to_vec(),
        ParamsAdamW {
            lr: h.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let dropout = objective::dropout(adapter.config().dropout, h.seed);

    // Every feedback text in the order the loss reads them: corrections, then each
    // preference's chosen and rejected answers, then rated answers.
    let nc = set.corrections.len();
    let mut feedback: Vec<&Pair> = set.corrections.iter().map(|c| &c.pair).collect();
    for p in &set.preferences {
        feedback.push(&p.chosen);
        feedback.push(&p.rejected);
    }
    feedback.extend(set.ratings.iter().map(|r| &r.pair));

    // Fixed references: the parent's scores of preference and rating answers (DPO,
    // KTO) and the base's distributions on the anchors (KL).
    let ref_pairs = &feedback[nc..];
    let reference: Vec<f32> = if ref_pairs.is_empty() {
        Vec::new()
    } else {
        objective::score(model, parent, ref_pairs, &[], Mode::Serve)?
            .scores
            .iter()
            .map(|s| s.logp)
            .collect()
    };
    // Below the first adapted layer the activations of every training text are the
    // same at every step: compute them once (the anchors' once per learner).
    let layer = adapter.first_layer();
    let feedback_hidden = objective::hidden_before(model, &feedback, layer)?;
    let anchor_hidden: Vec<Tensor> = if set.anchors.is_empty() || h.kl_weight <= 0.0 {
        Vec::new()
    } else {
        let cache = set.anchor_cache.clone().unwrap_or_default();
        cache.get(model, &set.anchors, layer)?.to_vec()
    };
    let anchor_refs: Vec<Tensor> = if anchor_hidden.is_empty() {
        Vec::new()
    } else {
        let pairs: Vec<&Pair> = set.anchors.iter().collect();
        let keep = vec![true; pairs.len()];
        let hidden: Vec<&Tensor> = anchor_hidden.iter().collect();
        objective::score_from(
            model,
            None,
            &pairs,
            &keep,
            Mode::Serve,
            Some((layer, &hidden)),
        )?
        .full
        .into_iter()
        .map(|t| t.ok_or_else(|| Error::InvalidArgument("missing anchor rows".into())))
        .collect::<Result<_>>()?
    };

    let np = set.preferences.len();
    let nr = set.ratings.len();
    let w_sum = |w: &mut dyn Iterator<Item = f32>| w.map(|x| x.max(0.0)).sum::<f32>().max(1e-9);
    let c_total = w_sum(&mut set.corrections.iter().map(|c| c.weight));
    let p_total = w_sum(&mut set.preferences.iter().map(|p| p.weight));
    let r_total = w_sum(&mut set.ratings.iter().map(|r| r.weight));
    let dev = model.device().clone();
    let vec_t = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &dev);

    let mut logs = Vec::new();
    for step in 0..h.max_steps {
        let t0 = std::time::Instant::now();
        let anchors: Vec<usize> = if anchor_refs.is_empty() {
            Vec::new()
        } else {
            let k = h.anchors_per_step.min(set.anchors.len());
            (0..k).map(|i| (step * k + i) % set.anchors.len()).collect()
        };
        let mut pairs = feedback.clone();
        let first_anchor = pairs.len();
        pairs.extend(anchors.iter().map(|&i| &set.anchors[i]));
        let mut keep = vec![false; first_anchor];
        keep.extend(std::iter::repeat_n(true, anchors.len()));
        let mut hidden: Vec<&Tensor> = feedback_hidden.iter().collect();
        hidden.extend(anchors.iter().map(|&i| &anchor_hidden[i]));
        let scored = objective::score_from(
            model,
            Some(&adapter),
            &pairs,
            &keep,
            Mode::Train {
                dropout: dropout.as_ref(),
            },
            Some((layer, &hidden)),
        )?;
        let tokens: usize = pairs
            .iter()
            .map(|p| p.prompt.len() + p.answer.len() - 1)
            .sum();
        let zero = || Tensor::zeros((), candle_core::DType::F32, &dev);

        // Corrections: weighted mean per-token negative log-likelihood.
        let sft = if nc > 0 {
            let coef: Vec<f32> = set
                .corrections
                .iter()
                .zip(&scored.scores)
                .map(|(c, s)| -c.weight.max(0.0) / c_total / s.tokens as f32)
                .collect();
            (scored.logp.narrow(0, 0, nc)? * vec_t(coef)?)?.sum_all()?
        } else {
            zero()?
        };
        // Preferences: DPO against the parent.
        let dpo = if np > 0 {
            let lp = scored.logp.narrow(0, nc, 2 * np)?.reshape((np, 2))?;
            let refs: Vec<f32> = (0..np)
                .map(|i| reference[2 * i] - reference[2 * i + 1])
                .collect();
            let margin = (lp.narrow(1, 0, 1)? - lp.narrow(1, 1, 1)?)?.squeeze(1)?;
            let z = ((margin - vec_t(refs)?)? * h.dpo_beta)?;
            let w: Vec<f32> = set
                .preferences
                .iter()
                .map(|p| -p.weight.max(0.0) / p_total)
                .collect();
            (objective::log_sigmoid(&z)? * vec_t(w)?)?.sum_all()?
        } else {
            zero()?
        };
        // Ratings: KTO, desirable answers pushed above the reference point and
        // undesirable ones below it.
        let kto = if nr > 0 {
            let lp = scored.logp.narrow(0, nc + 2 * np, nr)?;
            let refs: Vec<f32> = reference[2 * np..].to_vec();
            let reward = (lp - vec_t(refs.clone())?)?;
            let plain: Vec<f32> = reward.detach().to_vec1()?;
            let z0 = (plain.iter().sum::<f32>() / nr as f32).max(0.0);
            let sign: Vec<f32> = set
                .ratings
                .iter()
                .map(|r| if r.desirable { 1.0 } else { -1.0 })
                .collect();
            let x = (((reward - z0 as f64)? * vec_t(sign)?)? * h.kto_beta)?;
            let sig = candle_nn::ops::sigmoid(&x)?;
            let w: Vec<f32> = set
                .ratings
                .iter()
                .map(|r| r.weight.max(0.0) / r_total)
                .collect();
            ((sig.neg()? + 1.0)? * vec_t(w)?)?.sum_all()?
        } else {
            zero()?
        };
        // Anchors: mean KL to the base per anchor token.
        let kl = if anchors.is_empty() {
            zero()?
        } else {
            let mut total: Option<Tensor> = None;
            let mut rows = 0;
            for (j, &a) in anchors.iter().enumerate() {
                let Some(lp) = &scored.full[first_anchor + j] else {
                    continue;
                };
                rows += lp.dim(0)?;
                let k = objective::kl_rows(&anchor_refs[a], lp)?;
                total = Some(match total {
                    Some(t) => (t + k)?,
                    None => k,
                });
            }
            (total.map_or_else(zero, Ok)? / rows.max(1) as f64)?
        };
        let l2 = objective::l2sp(&adapter, &start)?;
        let loss = (((&sft + &dpo)? + &kto)? + ((&kl * h.kl_weight)? + (&l2 * h.l2sp_weight)?)?)?;

        let learned = if nc == 0 {
            1.0
        } else {
            scored.scores[..nc].iter().filter(|s| s.greedy).count() as f32 / nc as f32
        };
        let sure = scored.scores[..nc]
            .iter()
            .all(|s| s.greedy && (s.min_logp as f64) >= h.target_prob.ln());
        let scalar = |t: &Tensor| t.to_scalar::<f32>();
        let mut log = StepLog {
            step: step + 1,
            loss: scalar(&loss)?,
            sft: scalar(&sft)?,
            dpo: scalar(&dpo)?,
            kto: scalar(&kto)?,
            kl: scalar(&kl)?,
            l2sp: scalar(&l2)?,
            learned,
            tokens,
            secs: 0.0,
        };
        // Stop before updating once the adapter as it is meets the target: the
        // checked state is the one that ships.
        let done = step + 1 >= h.min_steps && nc > 0 && sure;
        if !done {
            let grads = loss.backward()?;
            opt.step(&grads)?;
        }
        log.secs = t0.elapsed().as_secs_f32();
        let keep_going = progress(&log);
        logs.push(log);
        if !keep_going {
            return Err(Error::InvalidArgument("training was cancelled".into()));
        }
        if done {
            break;
        }
    }
    Ok(Outcome {
        adapter: adapter.freeze()?,
        steps: logs,
    })
}
