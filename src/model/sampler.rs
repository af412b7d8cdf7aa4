//! Drawing the next token from one row of logits.
//!
//! The rules are those of candle-transformers' `LogitsProcessor` (greedy at temperature
//! 0; otherwise a softmax at the temperature, optionally cut to the `k` most likely
//! tokens and then to the smallest set whose probability reaches `p`, and a weighted
//! draw from a seeded `StdRng`), computed on a slice with one scratch buffer that lives
//! as long as the sequence. candle's version builds four vocabulary-sized tensors or
//! vectors per token (49,152 floats each for SmolLM2); at eight sequences that was
//! about 4 ms of a 50 ms decode step, much of it page faults on fresh allocations.

use rand::{Rng, SeedableRng};

use super::vexp::exp_in_place;

/// Candidates examined first for top-p: when the most likely 64 already reach `p`,
/// the rest of the vocabulary needs no sorting.
const NUCLEUS_PROBE: usize = 64;

/// How a sequence draws its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Rule {
    /// The most likely token.
    Greedy,
    /// A draw at `temperature`, from the `top_k` most likely tokens when set, then from
    /// the smallest set of those reaching probability `top_p` when below 1.
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    },
}

/// A seeded sampler for one sequence.
pub(crate) struct Sampler {
    rule: Rule,
    rng: rand::rngs::StdRng,
    /// Unnormalised probabilities, reused across steps.
    weights: Vec<f32>,
    /// Candidate indices for top-k and top-p, reused across steps.
    order: Vec<u32>,
}

impl Sampler {
    pub(crate) fn new(rule: Rule, seed: u64) -> Self {
        Self {
            rule,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            weights: Vec::new(),
            order: Vec::new(),
        }
    }

    /// The next token from `logits` (one per vocabulary entry; empty gives 0).
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        let (temperature, top_k, top_p) = match self.rule {
            Rule::Greedy => return argmax(logits),
            Rule::Sample {
                temperature,
                top_k,
                top_p,
            } => (temperature, top_k, top_p),
        };
        if logits.is_empty() {
            return 0;
        }
        // exp((l − max) / T): the softmax without its normalisation, which the draw
        // does not need.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / temperature;
        self.weights.clear();
        self.weights
            .extend(logits.iter().map(|&l| (l - max) * inv_t));
        exp_in_place(&mut self.weights);
        let total: f32 = self.weights.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            // Non-finite logits: fall back to the most likely token.
            return argmax(logits);
        }
        let k = top_k.filter(|&k| k < self.weights.len());
        let p = top_p.filter(|&p| p > 0.0 && p < 1.0);
        if k.is_none() && p.is_none() {
            return draw(&mut self.rng, &self.weights, total, |i| i as u32);
        }
        // Candidates, most likely first: the top `k`, or for top-p alone the top
        // NUCLEUS_PROBE when they reach `p` (else the whole vocabulary).
        let w = &self.weights;
        self.order.clear();
        self.order.extend(0..w.len() as u32);
        let by_weight = |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]);
        let keep = match (k, p) {
            (Some(k), _) => k,
            (None, Some(p)) if NUCLEUS_PROBE < w.len() => {
                self.order.select_nth_unstable_by(NUCLEUS_PROBE, by_weight);
                let head: f32 = self.order[..NUCLEUS_PROBE]
                    .iter()
                    .map(|&i| w[i as usize])
                    .sum();
                if head / total >= p {
                    // Already partitioned: the first NUCLEUS_PROBE are the largest.
                    self.order.truncate(NUCLEUS_PROBE);
                }
                self.order.len()
            }
            _ => w.len(),
        };
        if keep < self.order.len() {
            self.order.select_nth_unstable_by(keep, by_weight);
            self.order.truncate(keep);
        }
        self.order.sort_by(by_weight);
        if let Some(p) = p {
            // Top-p over the whole distribution's probabilities (also after top-k, as
            // candle does): keep tokens while the running sum is below p, so the one
            // that crosses p stays.
            let mut cum = 0.0;
            let mut cut = self.order.len();
            for (n, &i) in self.order.iter().enumerate() {
                if cum >= p {
                    cut = n;
                    break;
                }
                cum += w[i as usize] / total;
            }
            self.order.truncate(cut.max(1));
        }
        let kept_total: f32 = self.order.iter().map(|&i| w[i as usize]).sum();
        let cand: Vec<f32> = self.order.iter().map(|&i| w[i as usize]).collect();
        let order = &self.order;
        draw(&mut self.rng, &cand, kept_total, |n| order[n])
    }
}

/// Index of the largest value (the first of equals); 0 for an empty slice.
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// A draw proportional to `weights` (summing to `total`), mapped through `id`.
fn draw(
    rng: &mut rand::rngs::StdRng,
    weights: &[f32],
    total: f32,
    id: impl Fn(usize) -> u32,
) -> u32 {
    let target = rng.random::<f64>() * total as f64;
    let mut cum = 0f64;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cum += w as f64;
            last = i;
            if cum > target {
                return id(i);
            }
        }
    }
    // Rounding left the target at the very end: the last token with weight.
    id(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        // Probabilities at T = 1 roughly 0.64, 0.24, 0.09, 0.03, and a long tail.
        let mut v = vec![-20.0f32; 1000];
        v[7] = 3.0;
        v[3] = 2.0;
        v[500] = 1.0;
        v[999] = 0.0;
        v
    }

    fn counts(rule: Rule, draws: usize) -> std::collections::HashMap<u32, usize> {
        let mut s = Sampler::new(rule, 42);
        let l = logits();
        let mut c = std::collections::HashMap::new();
        for _ in 0..draws {
            *c.entry(s.sample(&l)).or_insert(0) += 1;
        }
        c
    }

    fn rule(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Rule {
        Rule::Sample {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_takes_the_most_likely_token() {
        assert_eq!(Sampler::new(Rule::Greedy, 0).sample(&logits()), 7);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn draws_follow_the_softmax_at_the_temperature() {
        let n = 20_000;
        let c = counts(rule(1.0, None, None), n);
        let e = [3.0f64, 2.0, 1.0, 0.0].map(f64::exp);
        let z: f64 = e.iter().sum::<f64>() + 996.0 * (-20f64).exp();
        for (tok, want) in [
            (7u32, e[0] / z),
            (3, e[1] / z),
            (500, e[2] / z),
            (999, e[3] / z),
        ] {
            let got = *c.get(&tok).unwrap_or(&0) as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.015,
                "token {tok}: {got:.3} drawn, {want:.3} expected"
            );
        }
        // A low temperature sharpens the distribution.
        let cold = counts(rule(0.1, None, None), 2000);
        assert!(*cold.get(&7).unwrap_or(&0) > 1990);
    }

    #[test]
    fn top_k_and_top_p_cut_the_candidates() {
        let k2 = counts(rule(1.0, Some(2), None), 5000);
        assert!(k2.keys().all(|t| *t == 7 || *t == 3), "{k2:?}");
        assert!(k2.len() == 2);
        // p = 0.7: 0.64 is below it, so the second token is kept and nothing else.
        let p = counts(rule(1.0, None, Some(0.7)), 5000);
        assert!(p.keys().all(|t| *t == 7 || *t == 3), "{p:?}");
        // p = 0.5: the first token alone crosses it.
        let p = counts(rule(1.0, None, Some(0.5)), 500);
        assert_eq!(p.keys().copied().collect::<Vec<_>>(), vec![7]);
        // p = 0.99: the four named tokens hold 99.99%, so only they are drawn.
        let p = counts(rule(1.0, None, Some(0.99)), 20_000);
        assert!(p.keys().all(|t| [7, 3, 500, 999].contains(t)), "{p:?}");
        // Top-k then top-p.
        let kp = counts(rule(1.0, Some(3), Some(0.5)), 500);
        assert_eq!(kp.keys().copied().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn a_flat_distribution_beyond_the_probe_is_sorted_whole() {
        // 1000 equal logits: the top 64 hold 6.4%, so top-p 0.5 keeps about 500.
        let l = vec![0.0f32; 1000];
        let mut s = Sampler::new(rule(1.0, None, Some(0.5)), 7);
        let drawn: std::collections::HashSet<u32> = (0..4000).map(|_| s.sample(&l)).collect();
        assert!(drawn.len() > 300 && drawn.len() <= 501, "{}", drawn.len());
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let l = logits();
        let mut a = Sampler::new(rule(0.8, None, Some(0.95)), 9);
        let mut b = Sampler::new(rule(0.8, None, Some(0.95)), 9);
        for _ in 0..100 {
            assert_eq!(a.sample(&l), b.sample(&l));
        }
    }

    #[test]
    fn non_finite_logits_do_not_panic() {
        let mut s = Sampler::new(rule(1.0, Some(3), Some(0.9)), 1);
        let _ = s.sample(&[f32::NAN, 1.0, f32::INFINITY]);
        let _ = s.sample(&[]);
    }
}
