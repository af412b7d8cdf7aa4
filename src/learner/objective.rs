//! The training objective: every kind of feedback, the anchor KL and the L2-SP
//! penalty, computed from **one** packed forward pass per step.
//!
//! All sequences of a step (corrections, both sides of each preference, rated
//! answers, anchor texts) are packed into one batch; only the rows whose next-token
//! distribution matters reach the output head ([`Outputs::Rows`]).

use candle_core::{Tensor, D};

use crate::model::{Dropout, Error, Llama, LoraAdapter, Mode, Outputs, Result, SeqInput};

/// A prompt and an answer, as token ids (prompt rendered with the chat template,
/// answer ending with the end-of-turn token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pair {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Answer ids.
    pub answer: Vec<u32>,
}

impl Pair {
    fn check(&self) -> Result<()> {
        if self.prompt.is_empty() || self.answer.is_empty() {
            return Err(Error::InvalidArgument(
                "a training example has an empty prompt or answer".into(),
            ));
        }
        Ok(())
    }
}

/// Sum and count of answer-token log-probabilities of one pair.
#[derive(Debug, Clone, Copy)]
pub struct SeqScore {
    /// Σ log p(answer token).
    pub logp: f32,
    /// Number of answer tokens.
    pub tokens: usize,
    /// Whether every answer token is the model's top-1 choice (greedy decoding would
    /// reproduce the answer).
    pub greedy: bool,
    /// The smallest log-probability of any answer token (how surely it is top-1).
    pub min_logp: f32,
}

/// Rows of the packed batch that a pair contributes, and their targets.
struct Layout {
    /// Token ids fed to the model (prompt + answer minus the last token).
    input: Vec<u32>,
    /// Packed rows predicting answer tokens.
    rows: Vec<u32>,
    /// The answer tokens they predict.
    targets: Vec<u32>,
}

fn layout(pair: &Pair, offset: usize) -> Layout {
    let full: Vec<u32> = pair.prompt.iter().chain(&pair.answer).copied().collect();
    let input = full[..full.len() - 1].to_vec();
    let first = pair.prompt.len() - 1;
    let rows = (first..input.len()).map(|p| (offset + p) as u32).collect();
    let targets = full[first + 1..].to_vec();
    Layout {
        input,
        rows,
        targets,
    }
}

/// The result of one packed forward pass.
pub struct Scored {
    /// Per pair: differentiable Σ log p(answer), shape `(pairs,)`.
    pub logp: Tensor,
    /// Per pair: `(rows, vocab)` log-softmax over its answer rows (only for pairs
    /// whose index is in `full_rows`).
    pub full: Vec<Option<Tensor>>,
    /// Plain numbers per pair.
    pub scores: Vec<SeqScore>,
}

/// Runs `pairs` through `model` with `adapter` in one packed pass.
///
/// `mode` decides whether a graph is built (training) or fast kernels run. Full
/// log-softmax rows are kept for pairs `i` with `keep_full[i]` (anchor KL needs the
/// whole distribution, the other objectives only the answer tokens).
pub fn score(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    pairs: &[&Pair],
    keep_full: &[bool],
    mode: Mode<'_>,
) -> Result<Scored> {
    score_from(model, adapter, pairs, keep_full, mode, None)
}

/// The hidden states of each pair's input entering `layer`, computed with the base
/// model's fast kernels: below the first adapted layer they never change during a
/// run, so a run computes them once and every step resumes from them.
pub fn hidden_before(model: &Llama, pairs: &[&Pair], layer: usize) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(pairs.len());
    // Moderate packs keep the transient activations small.
    for chunk in pairs.chunks(16) {
        let layouts: Vec<Layout> = chunk
            .iter()
            .map(|p| p.check().map(|_| layout(p, 0)))
            .collect::<Result<_>>()?;
        let mut seqs: Vec<SeqInput<'_>> = layouts
            .iter()
            .map(|l| SeqInput {
                tokens: &l.input,
                cache: None,
                adapter: None,
                tap: None,
            })
            .collect();
        let h = model.forward(&mut seqs, Outputs::HiddenBefore(layer), Mode::Serve)?;
        let mut start = 0;
        for l in &layouts {
            out.push(h.narrow(0, start, l.input.len())?.detach());
            start += l.input.len();
        }
    }
    Ok(out)
}

/// [`score`], resuming at `layer` from hidden states that [`hidden_before`] computed
/// for the same pairs.
pub fn score_from(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    pairs: &[&Pair],
    keep_full: &[bool],
    mode: Mode<'_>,
    resume: Option<(usize, &[&Tensor])>,
) -> Result<Scored> {
    if pairs.is_empty() {
        return Err(Error::InvalidArgument("empty training batch".into()));
    }
    let mut layouts = Vec::with_capacity(pairs.len());
    let mut offset = 0;
    for p in pairs {
        p.check()?;
        let l = layout(p, offset);
        offset += l.input.len();
        layouts.push(l);
    }
    let rows: Vec<u32> = layouts.iter().flat_map(|l| l.rows.clone()).collect();
    let targets: Vec<u32> = layouts.iter().flat_map(|l| l.targets.clone()).collect();
    let mut seqs: Vec<SeqInput<'_>> = layouts
        .iter()
        .map(|l| SeqInput {
            tokens: &l.input,
            cache: None,
            adapter,
            tap: None,
        })
        .collect();
    let n = rows.len();
    let logits = match resume {
        None => model.forward(&mut seqs, Outputs::Rows(rows), mode)?,
        Some((layer, hidden)) => {
            if hidden.len() != pairs.len() {
                return Err(Error::InvalidArgument(
                    "resumed hidden states do not match the batch".into(),
                ));
            }
            let x = Tensor::cat(hidden, 0)?;
            model.forward_from(&mut seqs, layer, x, Outputs::Rows(rows), mode)?
        }
    };
    let dev = model.device();
    let logp_all = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let argmax: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let tgt = Tensor::from_vec(targets.clone(), (n, 1), dev)?;
    let token_logp = logp_all.gather(&tgt, 1)?.squeeze(1)?;
    // Segment sums as one product with a (pairs, rows) indicator matrix.
    let mut ind = vec![0f32; pairs.len() * n];
    let mut start = 0;
    let mut spans = Vec::with_capacity(pairs.len());
    for (i, l) in layouts.iter().enumerate() {
        for r in start..start + l.rows.len() {
            ind[i * n + r] = 1.0;
        }
        spans.push((start, l.rows.len()));
        start += l.rows.len();
    }
    let ind = Tensor::from_vec(ind, (pairs.len(), n), dev)?;
    let logp = ind.matmul(&token_logp.unsqueeze(1)?)?.squeeze(1)?;
    let plain: Vec<f32> = logp.detach().to_vec1()?;
    let token_plain: Vec<f32> = token_logp.detach().to_vec1()?;
    let scores = spans
        .iter()
        .zip(&plain)
        .map(|(&(s, len), &lp)| SeqScore {
            logp: lp,
            tokens: len,
            greedy: (s..s + len).all(|r| argmax[r] == targets[r]),
            min_logp: token_plain[s..s + len]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min),
        })
        .collect();
    let full = spans
        .iter()
        .enumerate()
        .map(|(i, &(s, len))| {
            if keep_full.get(i).copied().unwrap_or(false) {
                logp_all.narrow(0, s, len).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Scored { logp, full, scores })
}

/// `KL(p_ref ‖ p)` summed over rows, for log-probabilities of shape `(rows, vocab)`.
pub fn kl_rows(ref_logp: &Tensor, logp: &Tensor) -> Result<Tensor> {
    let p = ref_logp.exp()?;
    Ok((p * (ref_logp - logp)?)?.sum_all()?)
}

/// Σ‖θ − θ₀‖² over the adapter's variables, `start` in [`LoraAdapter::vars`] order.
pub fn l2sp(adapter: &LoraAdapter, start: &[Tensor]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (v, s) in adapter.vars().iter().zip(start) {
        let d = (v.as_tensor() - s)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + d)?,
            None => d,
        });
    }
    total.ok_or_else(|| Error::InvalidArgument("the adapter has no variables".into()))
}

/// `log σ(x)`, stable for large |x|.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    // log σ(x) = −softplus(−x) = min(x, 0) − log(1 + exp(−|x|))
    let neg_abs = x.abs()?.neg()?;
    let soft = (neg_abs.exp()? + 1.0)?.log()?;
    Ok((x.minimum(0f32)? - soft)?)
}

/// Dropout for adapter inputs, if configured.
pub fn dropout(p: f64, seed: u64) -> Option<Dropout> {
    (p > 0.0).then(|| Dropout::new(p, seed ^ 0x5eed))
}
