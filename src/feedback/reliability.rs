//! Source reliability, learned from agreement: a one-coin Dawid–Skene model fitted by
//! EM over every judgement sources have made (ratings, preferences, and the outcome
//! of screening and human review), with forgetting.
//!
//! Each source has an accuracy `a` (the chance its judgement matches the truth);
//! each item a probability `q` that the truth is "yes". E-step: `q` from the
//! accuracy-weighted votes (items a reviewer decided are fixed). M-step: `a` from the
//! soft agreement with `q`, shrunk towards a prior of 0.6 by 5 pseudo-judgements, so
//! new sources start low. Reliability is `2a - 1` clipped to 0..1: a source that
//! agrees with the consensus no more than chance (random ratings) ends near 0.

use std::collections::{HashMap, HashSet};

/// One judgement: `source` said `label` (0..1) about `item`, worth `weight`
/// (forgetting: older judgements weigh less).
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Who.
    pub source: String,
    /// About what.
    pub item: String,
    /// What they said: 1 yes (good, preferred first), 0 no.
    pub label: f64,
    /// How much it counts.
    pub weight: f64,
}

/// Prior accuracy and its strength in pseudo-judgements.
const PRIOR_ACC: f64 = 0.6;
const PRIOR_N: f64 = 5.0;

/// Reliability of every source that made a judgement. `fixed` holds items whose
/// truth is known (human review, screening); `trusted` sources count as 0.95
/// accurate, `banned` ones are ignored.
pub fn estimate(
    judgements: &[Judgement],
    fixed: &HashMap<String, f64>,
    trusted: &HashSet<String>,
    banned: &HashSet<String>,
) -> HashMap<String, f64> {
    let js: Vec<&Judgement> = judgements
        .iter()
        .filter(|j| !banned.contains(&j.source) && j.weight > 0.0)
        .collect();
    let mut acc: HashMap<&str, f64> = js
        .iter()
        .map(|j| {
            (
                j.source.as_str(),
                if trusted.contains(&j.source) {
                    0.95
                } else {
                    PRIOR_ACC
                },
            )
        })
        .collect();
    let mut q: HashMap<&str, f64> = HashMap::new();
    for _ in 0..30 {
        // E-step: item truths from accuracy-weighted votes.
        let mut logit: HashMap<&str, f64> = HashMap::new();
        for j in &js {
            let a = acc[j.source.as_str()].clamp(0.01, 0.99);
            let lr = (a / (1.0 - a)).ln() * j.weight;
            *logit.entry(j.item.as_str()).or_insert(0.0) += (2.0 * j.label - 1.0) * lr;
        }
        q = logit
            .into_iter()
            .map(|(item, l)| {
                let v = fixed
                    .get(item)
                    .copied()
                    .unwrap_or_else(|| 1.0 / (1.0 + (-l).exp()));
                (item, v)
            })
            .collect();
        // M-step: accuracies from soft agreement.
        let mut agree: HashMap<&str, (f64, f64)> = HashMap::new();
        for j in &js {
            let t = q[j.item.as_str()];
            let a = j.label * t + (1.0 - j.label) * (1.0 - t);
            let e = agree.entry(j.source.as_str()).or_insert((0.0, 0.0));
            e.0 += a * j.weight;
            e.1 += j.weight;
        }
        for (s, (a, n)) in agree {
            let v = if trusted.contains(s) {
                0.95
            } else {
                (a + PRIOR_ACC * PRIOR_N) / (n + PRIOR_N)
            };
            acc.insert(s, v);
        }
    }
    let _ = q;
    acc.into_iter()
        .map(|(s, a)| (s.to_string(), (2.0 * a - 1.0).clamp(0.0, 1.0)))
        .collect()
}

/// Reliability of a source nobody has judged yet.
pub fn initial() -> f64 {
    2.0 * PRIOR_ACC - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_sources_rise_and_random_ones_fall() {
        let mut js = Vec::new();
        let mut seed = 17u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for item in 0..40 {
            let truth = f64::from(u8::from(item % 3 != 0));
            for s in 0..5 {
                js.push(Judgement {
                    source: format!("good{s}"),
                    item: format!("i{item}"),
                    label: truth,
                    weight: 1.0,
                });
            }
            for s in 0..20 {
                let label = f64::from(u8::from(rnd() < 0.5));
                js.push(Judgement {
                    source: format!("noisy{s}"),
                    item: format!("i{item}"),
                    label,
                    weight: 1.0,
                });
            }
        }
        let r = estimate(&js, &HashMap::new(), &HashSet::new(), &HashSet::new());
        for s in 0..5 {
            assert!(r[&format!("good{s}")] > 0.8, "{r:?}");
        }
        let noisy: f64 = (0..20).map(|s| r[&format!("noisy{s}")]).sum::<f64>() / 20.0;
        assert!(noisy < 0.2, "{noisy}");
        assert!((initial() - 0.2).abs() < 1e-9);
    }
}
