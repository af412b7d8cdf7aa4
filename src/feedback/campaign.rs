//! Coordinated campaigns: groups of sources sending the same or near-identical
//! corrections within a short window, mostly from young sources. What counts is how
//! many independent sources agree, so a campaign must not look like agreement.

use std::collections::HashSet;

/// A recent correction, as campaign detection sees it.
#[derive(Debug, Clone)]
pub struct Recent {
    /// Feedback id.
    pub id: String,
    /// Source.
    pub source: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// SimHash of the normalised text (long texts).
    pub simhash: u64,
    /// Content words of the normalised text (short texts).
    pub words: HashSet<String>,
    /// What it is about.
    pub item_key: String,
}

/// Thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// SimHash bits that may differ for two texts to count as near-identical.
    pub max_bits: u32,
    /// Or: the share of content words two texts must have in common (Jaccard).
    pub min_jaccard: f64,
    /// Distinct sources that make a group.
    pub min_sources: usize,
    /// Share of young sources (or a short time span) that makes the group a campaign.
    pub young_share: f64,
    /// A group whose items all arrived within this span is synchronised.
    pub burst_ms: i64,
}

/// A detected campaign: the feedback ids in it and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Every item of the group (the new one included).
    pub ids: Vec<String>,
    /// Distinct sources.
    pub sources: usize,
    /// Human-readable reason.
    pub reason: String,
}

/// Whether `new` joins a campaign with `recent` items from other sources. `young`
/// tells whether a source is young; `reliable` sources (trusted, or with a good
/// track record) never count as campaign members.
pub fn detect(
    new: &Recent,
    recent: &[Recent],
    rules: Rules,
    young: impl Fn(&str) -> bool,
    reliable: impl Fn(&str) -> bool,
) -> Option<Campaign> {
    if reliable(&new.source) {
        return None;
    }
    let group: Vec<&Recent> = recent
        .iter()
        .filter(|r| r.id != new.id && !reliable(&r.source))
        .filter(|r| {
            let inter = r.words.intersection(&new.words).count();
            let union = r.words.union(&new.words).count().max(1);
            (r.simhash ^ new.simhash).count_ones() <= rules.max_bits
                || inter as f64 / union as f64 >= rules.min_jaccard
        })
        .chain(std::iter::once(new))
        .collect();
    let sources: HashSet<&str> = group.iter().map(|r| r.source.as_str()).collect();
    if sources.len() < rules.min_sources {
        return None;
    }
    let young_n = sources.iter().filter(|s| young(s)).count();
    let young_share = young_n as f64 / sources.len() as f64;
    let first = group.iter().map(|r| r.created_ms).min().unwrap_or(0);
    let last = group.iter().map(|r| r.created_ms).max().unwrap_or(0);
    let span = last - first;
    let targets: HashSet<&str> = group.iter().map(|r| r.item_key.as_str()).collect();
    if young_share < rules.young_share && span > rules.burst_ms {
        return None;
    }
    Some(Campaign {
        ids: group.iter().map(|r| r.id.clone()).collect(),
        sources: sources.len(),
        reason: format!(
            "campaign: {} near-identical corrections from {} sources ({}% young) within {} s, targeting {} item(s)",
            group.len(),
            sources.len(),
            (young_share * 100.0).round(),
            span / 1000,
            targets.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, source: &str, ms: i64, h: u64) -> Recent {
        Recent {
            id: id.into(),
            source: source.into(),
            created_ms: ms,
            simhash: h,
            words: HashSet::new(),
            item_key: "k".into(),
        }
    }

    #[test]
    fn near_identical_texts_from_young_sources_are_a_campaign() {
        let rules = Rules {
            max_bits: 8,
            min_jaccard: 0.6,
            min_sources: 3,
            young_share: 0.6,
            burst_ms: 120_000,
        };
        let recent = vec![r("a", "s1", 0, 0b1011), r("b", "s2", 1000, 0b1001)];
        let c = detect(
            &r("c", "s3", 2000, 0b1111),
            &recent,
            rules,
            |_| true,
            |_| false,
        )
        .expect("campaign");
        assert_eq!(c.ids.len(), 3);
        // Two sources are not a group; reliable sources never are.
        assert!(detect(
            &r("c", "s1", 2000, 0b1111),
            &recent[..1],
            rules,
            |_| true,
            |_| false
        )
        .is_none());
        assert!(detect(
            &r("c", "s3", 2000, 0b1111),
            &recent,
            rules,
            |_| true,
            |_| true
        )
        .is_none());
        // Old sources spread over a day are agreement, not a campaign.
        let spread = vec![r("a", "s1", 0, 1), r("b", "s2", 40_000_000, 1)];
        assert!(detect(
            &r("c", "s3", 80_000_000, 1),
            &spread,
            rules,
            |_| false,
            |_| false
        )
        .is_none());
    }
}
