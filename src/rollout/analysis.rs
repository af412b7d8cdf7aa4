//! Comparing live signals: a canary against the serving version, or the serving
//! version's recent window against its own baseline. Pure functions over
//! [`Summary`]s, so the rules are tested without a server.

use serde::Serialize;

use super::config::LiveConfig;
use super::signals::Summary;

/// A live-signal condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Output-flag rate: fails when it reaches `flag_ratio` times the reference
    /// and `flag_margin` above it.
    OutputFlags,
    /// Mean rating: fails when it falls more than `rating_drop` below the reference.
    Ratings,
    /// Refusal rate: fails when it rises more than `refusal_margin` above the reference.
    Refusals,
    /// Mean answer length: fails outside `1/length_ratio … length_ratio` of the reference.
    AnswerLength,
    /// Shadow-probe KL per token: fails above `max_shadow_kl`.
    ShadowKl,
}

impl Condition {
    /// Every condition (what a canary is judged on).
    pub const ALL: [Condition; 5] = [
        Condition::OutputFlags,
        Condition::Ratings,
        Condition::Refusals,
        Condition::AnswerLength,
        Condition::ShadowKl,
    ];
    /// What the drift monitor watches.
    pub const DRIFT: [Condition; 3] = [
        Condition::OutputFlags,
        Condition::Ratings,
        Condition::ShadowKl,
    ];

    /// Its name in results and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Condition::OutputFlags => "output_flags",
            Condition::Ratings => "ratings",
            Condition::Refusals => "refusals",
            Condition::AnswerLength => "answer_length",
            Condition::ShadowKl => "shadow_kl",
        }
    }
}

/// One condition's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Which.
    pub condition: Condition,
    /// The observed value.
    pub value: f64,
    /// The reference value (or bound).
    pub reference: f64,
    /// `None` while there is not enough data.
    pub passed: Option<bool>,
    /// What it means.
    pub message: String,
}

/// The outcome of one analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Every condition looked at.
    pub measurements: Vec<Measurement>,
}

impl Analysis {
    /// The conditions that failed.
    pub fn failed(&self) -> Vec<&Measurement> {
        self.measurements
            .iter()
            .filter(|m| m.passed == Some(false))
            .collect()
    }

    /// `Some(true)`: no condition failed and at least one had data; `Some(false)`:
    /// one failed; `None`: inconclusive.
    pub fn verdict(&self) -> Option<bool> {
        if !self.failed().is_empty() {
            Some(false)
        } else if self.measurements.iter().any(|m| m.passed == Some(true)) {
            Some(true)
        } else {
            None
        }
    }

    /// The failed conditions' messages, joined.
    pub fn reasons(&self) -> String {
        self.failed()
            .iter()
            .map(|m| m.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How much data a comparison needs.
#[derive(Debug, Clone, Copy)]
pub struct Minimums {
    /// Answers on each side for answer signals.
    pub answers: usize,
    /// Ratings on each side for ratings.
    pub ratings: usize,
}

/// Compares `observed` with `reference` on `conditions`.
///
/// Answer signals need `min.answers` observed answers; the output-flag and refusal
/// rates compare with a reference rate of 0 when the reference has too few answers
/// (a canary that flags answers the serving version never had the traffic to show
/// still fails); length and ratings need enough data on both sides.
pub fn compare(
    observed: &Summary,
    reference: &Summary,
    conditions: &[Condition],
    live: &LiveConfig,
    min: Minimums,
) -> Analysis {
    let enough = observed.answers >= min.answers.max(1);
    let ref_enough = reference.answers >= min.answers.max(1);
    let measurements = conditions
        .iter()
        .map(|&c| match c {
            Condition::OutputFlags => {
                let v = observed.flag_rate();
                let r = if ref_enough {
                    reference.flag_rate()
                } else {
                    0.0
                };
                let fails = v >= r * live.flag_ratio && v >= r + live.flag_margin;
                Measurement {
                    condition: c,
                    value: v,
                    reference: r,
                    passed: enough.then_some(!fails),
                    message: format!(
                        "output-flag rate {:.3} against {:.3} (fails at {}x and +{})",
                        v, r, live.flag_ratio, live.flag_margin
                    ),
                }
            }
            Condition::Ratings => {
                let v = observed.mean_rating();
                let r = reference.mean_rating();
                let has = observed.ratings >= min.ratings.max(1)
                    && reference.ratings >= min.ratings.max(1);
                Measurement {
                    condition: c,
                    value: v,
                    reference: r,
                    passed: has.then_some(v >= r - live.rating_drop),
                    message: format!(
                        "mean rating {:.3} over {} ratings against {:.3} over {} (may fall {})",
                        v, observed.ratings, r, reference.ratings, live.rating_drop
                    ),
                }
            }
            Condition::Refusals => {
                let v = observed.refusal_rate();
                let r = if ref_enough {
                    reference.refusal_rate()
                } else {
                    0.0
                };
                Measurement {
                    condition: c,
                    value: v,
                    reference: r,
                    passed: enough.then_some(v <= r + live.refusal_margin),
                    message: format!(
                        "refusal rate {:.3} against {:.3} (may rise {})",
                        v, r, live.refusal_margin
                    ),
                }
            }
            Condition::AnswerLength => {
                let v = observed.mean_chars();
                let r = reference.mean_chars();
                let ratio = if r > 0.0 { v / r } else { 1.0 };
                let k = live.length_ratio.max(1.0);
                Measurement {
                    condition: c,
                    value: v,
                    reference: r,
                    passed: (enough && ref_enough).then_some(ratio <= k && ratio >= 1.0 / k),
                    message: format!(
                        "mean answer length {:.0} characters against {:.0} (within {}x)",
                        v, r, k
                    ),
                }
            }
            Condition::ShadowKl => {
                let v = observed.shadow_kl();
                Measurement {
                    condition: c,
                    value: v,
                    reference: live.max_shadow_kl,
                    passed: (observed.shadow >= live.min_shadow.max(1))
                        .then_some(v <= live.max_shadow_kl),
                    message: format!(
                        "shadow-probe KL {:.3} per token over {} answers (bound {})",
                        v, observed.shadow, live.max_shadow_kl
                    ),
                }
            }
        })
        .collect();
    Analysis { measurements }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rollout::config::default_live as live;

    fn answers(n: usize, flagged: usize, refusals: usize, chars: usize) -> Summary {
        Summary {
            answers: n,
            flagged,
            refusals,
            chars: n * chars,
            ..Summary::default()
        }
    }

    const MIN: Minimums = Minimums {
        answers: 10,
        ratings: 3,
    };

    #[test]
    fn too_little_data_is_inconclusive() {
        let a = compare(
            &answers(3, 3, 0, 10),
            &answers(100, 0, 0, 10),
            &Condition::ALL,
            &live(),
            MIN,
        );
        assert_eq!(a.verdict(), None, "{a:?}");
    }

    #[test]
    fn a_doubled_flag_rate_fails_and_a_steady_one_passes() {
        let l = live();
        let base = answers(100, 5, 0, 40);
        let bad = compare(&answers(50, 6, 0, 40), &base, &Condition::DRIFT, &l, MIN);
        assert_eq!(bad.verdict(), Some(false));
        assert_eq!(bad.failed()[0].condition, Condition::OutputFlags);
        let ok = compare(&answers(50, 3, 0, 40), &base, &Condition::DRIFT, &l, MIN);
        assert_eq!(ok.verdict(), Some(true), "{ok:?}");
        // With no flags in the reference, a small absolute rise passes, a larger fails.
        let clean = answers(100, 0, 0, 40);
        assert_eq!(
            compare(&answers(100, 1, 0, 40), &clean, &Condition::DRIFT, &l, MIN).verdict(),
            Some(true)
        );
        assert_eq!(
            compare(&answers(100, 5, 0, 40), &clean, &Condition::DRIFT, &l, MIN).verdict(),
            Some(false)
        );
    }

    #[test]
    fn falling_ratings_fail() {
        let l = live();
        let rated = |n: usize, sum: f64| Summary {
            ratings: n,
            rating_sum: sum,
            ..Summary::default()
        };
        let a = compare(&rated(5, 1.0), &rated(5, 5.0), &Condition::ALL, &l, MIN);
        assert_eq!(a.verdict(), Some(false));
        assert!(a.reasons().contains("mean rating 0.200"), "{}", a.reasons());
        let b = compare(&rated(5, 4.5), &rated(5, 5.0), &Condition::ALL, &l, MIN);
        assert_eq!(b.verdict(), Some(true));
    }

    #[test]
    fn refusals_length_and_shadow_kl_each_fail_alone() {
        let l = live();
        let base = answers(100, 0, 2, 100);
        for (obs, cond) in [
            (answers(50, 0, 20, 100), Condition::Refusals),
            (answers(50, 0, 2, 20), Condition::AnswerLength),
            (
                Summary {
                    shadow: 10,
                    kl_sum: 10.0,
                    ..answers(50, 0, 1, 100)
                },
                Condition::ShadowKl,
            ),
        ] {
            let a = compare(&obs, &base, &Condition::ALL, &l, MIN);
            let failed: Vec<Condition> = a.failed().iter().map(|m| m.condition).collect();
            assert_eq!(failed, vec![cond], "{a:?}");
        }
    }
}
