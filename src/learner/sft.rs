//! Weighted supervised fine-tuning of a LoRA adapter on (prompt, answer) pairs, with
//! the loss on answer tokens only.

use candle_core::{Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::model::{
    Dropout, Error, Llama, LoraAdapter, LoraConfig, Mode, Outputs, Result, SeqInput,
};

/// One training pair: the rendered prompt (chat template included) and the answer the
/// model should give (ending with the end-of-turn token).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Answer token ids.
    pub answer: Vec<u32>,
    /// Weight of this example in the batch loss.
    pub weight: f32,
}

/// Mean over examples (weighted) of the mean cross-entropy of each example's answer
/// tokens, computed with differentiable ops so gradients reach `adapter`.
pub fn sft_loss(
    model: &Llama,
    adapter: &LoraAdapter,
    batch: &[SftExample],
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    if batch.is_empty() {
        return Err(Error::InvalidArgument("empty training batch".into()));
    }
    let mut inputs = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut row_weights = Vec::new();
    let total_weight: f32 = batch.iter().map(|e| e.weight.max(0.0)).sum();
    if total_weight <= 0.0 {
        return Err(Error::InvalidArgument(
            "training batch has no positive weight".into(),
        ));
    }
    let mut offset = 0usize;
    for ex in batch {
        if ex.prompt.is_empty() || ex.answer.is_empty() {
            return Err(Error::InvalidArgument(
                "an example has an empty prompt or answer".into(),
            ));
        }
        let full: Vec<u32> = ex.prompt.iter().chain(&ex.answer).copied().collect();
        let input = full[..full.len() - 1].to_vec();
        // Position p predicts full[p + 1]; answer tokens start at prompt.len().
        let first = ex.prompt.len() - 1;
        let n = ex.answer.len();
        let w = ex.weight.max(0.0) / total_weight / n as f32;
        for p in first..input.len() {
            rows.push((offset + p) as u32);
            targets.push(full[p + 1]);
            row_weights.push(w);
        }
        offset += input.len();
        inputs.push(input);
    }
    let mut seqs: Vec<SeqInput<'_>> = inputs
        .iter()
        .map(|t| SeqInput {
            tokens: t,
            cache: None,
            adapter: Some(adapter),
            tap: None,
        })
        .collect();
    let logits = model.forward(&mut seqs, Outputs::AllTokens, Mode::Train { dropout })?;
    let dev = model.device();
    let n = rows.len();
    let logits = logits.index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::from_vec(targets, (n, 1), dev)?;
    let nll = logp.gather(&targets, 1)?.squeeze(1)?.neg()?;
    let w = Tensor::from_vec(row_weights, n, dev)?;
    Ok((nll * w)?.sum_all()?)
}

/// A LoRA adapter and its AdamW optimiser.
pub struct SftTrainer {
    adapter: LoraAdapter,
    optimizer: AdamW,
    dropout: Option<Dropout>,
}

impl SftTrainer {
    /// A fresh adapter of shape `config` for `model`, initialised from `seed`.
    pub fn new(model: &Llama, config: &LoraConfig, seed: u64, learning_rate: f64) -> Result<Self> {
        if !model.is_trainable() {
            return Err(Error::InvalidArgument(format!(
                "training needs a dense compute path (f32 or f16); the model was loaded with {}",
                model.compute()
            )));
        }
        let adapter = LoraAdapter::new_trainable(config, model.config(), seed, model.device())?;
        let optimizer = AdamW::new(
            adapter.vars().to_vec(),
            ParamsAdamW {
                lr: learning_rate,
                weight_decay: 0.0,
                ..ParamsAdamW::default()
            },
        )?;
        let dropout = (config.dropout > 0.0).then(|| Dropout::new(config.dropout, seed ^ 0x5eed));
        Ok(Self {
            adapter,
            optimizer,
            dropout,
        })
    }

    /// The adapter being trained.
    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    /// One optimisation step on `batch`; returns the loss before the step.
    pub fn step(&mut self, model: &Llama, batch: &[SftExample]) -> Result<f32> {
        let loss = sft_loss(model, &self.adapter, batch, self.dropout.as_ref())?;
        let grads = loss.backward()?;
        self.optimizer.step(&grads)?;
        Ok(loss.to_scalar::<f32>()?)
    }

    /// Gradients of the loss on `batch` for every adapter variable, in
    /// [`LoraAdapter::vars`] order, without updating anything.
    pub fn gradients(&self, model: &Llama, batch: &[SftExample]) -> Result<Vec<Option<Tensor>>> {
        let loss = sft_loss(model, &self.adapter, batch, self.dropout.as_ref())?;
        let grads = loss.backward()?;
        Ok(self
            .adapter
            .vars()
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect())
    }
}
