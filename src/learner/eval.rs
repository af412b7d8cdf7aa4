//! Checks a candidate adapter against the base: batched greedy decoding, KL and
//! top-1 agreement on held-out probes, and retention of corrections.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::objective::{self, Pair};
use crate::model::{KvCache, Llama, LoraAdapter, Mode, Outputs, Result, SeqInput, Tap};

/// Greedy answers to `prompts` (each at most `max_tokens`, stopping at any of
/// `stop_ids`, which are included), decoded together in one batch. Keys and values
/// are cached in f16 as the serving engine does by default, each sequence's cache
/// allocated once.
pub fn greedy_batch(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<Vec<u32>>> {
    Ok(greedy_batch_tapped(model, adapter, prompts, max_tokens, stop_ids, None)?.0)
}

/// [`greedy_batch`], also summing each answer's hidden states entering `tap_layer`
/// as the serving engine does for the safety probe (one [`Tap`] per prompt, empty
/// without a layer).
pub fn greedy_batch_tapped(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    stop_ids: &[u32],
    tap_layer: Option<usize>,
) -> Result<(Vec<Vec<u32>>, Vec<Tap>)> {
    let context = model.config().context_length;
    let layers = model.config().num_layers;
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            KvCache::with_dtype(layers, candle_core::DType::F16)
                .reserving((p.len() + max_tokens).min(context))
        })
        .collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![false; prompts.len()];
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    let mut taps: Vec<Tap> = prompts
        .iter()
        .map(|_| Tap::new(tap_layer.unwrap_or(usize::MAX)))
        .collect();
    for step in 0..max_tokens {
        let live: Vec<usize> = (0..prompts.len()).filter(|&i| !done[i]).collect();
        if live.is_empty() {
            break;
        }
        // The prompt's pass is not part of the answer: taps start with its tokens.
        let tapping = step > 0 && tap_layer.is_some();
        let mut seqs: Vec<SeqInput<'_>> = caches
            .iter_mut()
            .zip(&next)
            .zip(taps.iter_mut())
            .zip(&done)
            .filter(|(_, &d)| !d)
            .map(|(((c, t), tap), _)| SeqInput {
                tokens: t,
                cache: Some(c),
                adapter,
                tap: tapping.then_some(tap),
            })
            .collect();
        let logits = model.forward(&mut seqs, Outputs::LastToken, Mode::Serve)?;
        let ids: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        drop(seqs);
        for (&i, &id) in live.iter().zip(&ids) {
            out[i].push(id);
            next[i] = vec![id];
            if stop_ids.contains(&id) || prompts[i].len() + out[i].len() >= context {
                done[i] = true;
            }
        }
    }
    Ok((out, taps))
}

/// How far a candidate has moved from the base on held-out probes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drift {
    /// Mean `KL(base ‖ candidate)` per token of the base's own greedy answers.
    pub kl: f64,
    /// Share of those tokens where both models' top-1 token is the same.
    pub top1: f64,
    /// Tokens compared.
    pub tokens: usize,
}

/// KL and top-1 agreement of `candidate` with the base on `probes` (prompts with the
/// base's greedy answers), teacher-forced.
pub fn drift(model: &Llama, candidate: &LoraAdapter, probes: &[Pair]) -> Result<Drift> {
    drift_from(model, candidate, probes, None)
}

/// [`drift`], resuming both models at `layer` from the base's hidden states of the
/// probes there ([`objective::hidden_before`]): below the candidate's first adapted
/// layer the two models compute the same thing, so that part is computed once.
pub fn drift_from(
    model: &Llama,
    candidate: &LoraAdapter,
    probes: &[Pair],
    resume: Option<(usize, &[Tensor])>,
) -> Result<Drift> {
    if probes.is_empty() {
        return Ok(Drift {
            kl: 0.0,
            top1: 1.0,
            tokens: 0,
        });
    }
    let mut kl = 0.0;
    let mut agree = 0usize;
    let mut tokens = 0usize;
    for (c, chunk) in probes.chunks(16).enumerate() {
        let pairs: Vec<&Pair> = chunk.iter().collect();
        let keep = vec![true; pairs.len()];
        let hidden: Option<Vec<&Tensor>> =
            resume.map(|(_, h)| h[c * 16..c * 16 + pairs.len()].iter().collect());
        let from = resume.map(|(l, _)| l).zip(hidden.as_deref());
        let base = objective::score_from(model, None, &pairs, &keep, Mode::Serve, from)?;
        let cand = objective::score_from(model, Some(candidate), &pairs, &keep, Mode::Serve, from)?;
        for (b, c) in base.full.iter().zip(&cand.full) {
            let (Some(b), Some(c)) = (b, c) else { continue };
            kl += objective::kl_rows(b, c)?.to_scalar::<f32>()? as f64;
            let ab: Vec<u32> = b.argmax(D::Minus1)?.to_vec1()?;
            let ac: Vec<u32> = c.argmax(D::Minus1)?.to_vec1()?;
            agree += ab.iter().zip(&ac).filter(|(x, y)| x == y).count();
            tokens += ab.len();
        }
    }
    Ok(Drift {
        kl: kl / tokens.max(1) as f64,
        top1: agree as f64 / tokens.max(1) as f64,
        tokens,
    })
}

/// Which of `pairs` greedy decoding with `adapter` reproduces exactly.
pub fn reproduces(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    pairs: &[&Pair],
    stop_ids: &[u32],
) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(16) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| p.prompt.clone()).collect();
        let longest = chunk.iter().map(|p| p.answer.len()).max().unwrap_or(0);
        let got = greedy_batch(model, adapter, &prompts, longest, stop_ids)?;
        // An answer ending with a stop token is reproduced exactly; a truncated one
        // (a probe answer cut at its length limit) by its prefix.
        out.extend(
            chunk
                .iter()
                .zip(&got)
                .map(|(p, g)| g.get(..p.answer.len()) == Some(&p.answer[..])),
        );
    }
    Ok(out)
}

/// The base's greedy answers to `prompts`, as pairs for [`drift`] and anchors.
pub fn base_answers(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<Pair>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(16) {
        let got = greedy_batch(model, None, chunk, max_tokens, stop_ids)?;
        for (p, a) in chunk.iter().zip(got) {
            if !a.is_empty() {
                out.push(Pair {
                    prompt: p.clone(),
                    answer: a,
                });
            }
        }
    }
    Ok(out)
}
