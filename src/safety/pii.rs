//! Detectors for personal data: e-mail addresses, phone numbers, US social security
//! numbers, payment-card numbers (Luhn-checked) and IP addresses.
//!
//! They run on the original text (not the normalised form), since punctuation is
//! what makes an address an address. The privacy pipeline reuses them.

use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// `name@example.com`.
    Email,
    /// North-American and international phone numbers.
    Phone,
    /// US social security number `123-45-6789`.
    Ssn,
    /// Payment-card number passing the Luhn check.
    Card,
    /// IPv4 address.
    Ip,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 5] = [Self::Email, Self::Phone, Self::Ssn, Self::Card, Self::Ip];

    /// The placeholder that replaces it when redacted.
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Email => "[EMAIL]",
            Self::Phone => "[PHONE]",
            Self::Ssn => "[SSN]",
            Self::Card => "[CARD]",
            Self::Ip => "[IP]",
        }
    }

    fn regex(self) -> &'static Regex {
        static RES: OnceLock<Vec<Regex>> = OnceLock::new();
        let all = RES.get_or_init(|| {
            [
                r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b",
                r"(?:\+1[\s.-]?)?(?:\(\d{3}\)[\s.-]?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b|\+\d{1,3}(?:[\s.-]?\d{2,4}){2,4}\b",
                r"\b\d{3}-\d{2}-\d{4}\b",
                r"\b(?:\d[ -]?){12,18}\d\b",
                r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
            ]
            .iter()
            .map(|p| Regex::new(p).unwrap_or_else(|e| panic!("built-in PII pattern: {e}")))
            .collect()
        });
        &all[self as usize]
    }
}

/// One piece of personal data found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiMatch {
    /// What it is.
    pub kind: PiiKind,
    /// Byte range in the text.
    pub span: Range<usize>,
}

fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Finds every piece of personal data of the given kinds, without overlaps (the
/// more specific kinds win: e-mail, SSN, card, IP, then phone).
pub fn find(text: &str, kinds: &[PiiKind]) -> Vec<PiiMatch> {
    let mut out: Vec<PiiMatch> = Vec::new();
    let order = [
        PiiKind::Email,
        PiiKind::Ssn,
        PiiKind::Card,
        PiiKind::Ip,
        PiiKind::Phone,
    ];
    for kind in order {
        if !kinds.contains(&kind) {
            continue;
        }
        for m in kind.regex().find_iter(text) {
            if kind == PiiKind::Card && !luhn(m.as_str()) {
                continue;
            }
            if kind == PiiKind::Phone && m.as_str().chars().filter(char::is_ascii_digit).count() < 9
            {
                continue;
            }
            let span = m.range();
            if out
                .iter()
                .any(|o| o.span.start < span.end && span.start < o.span.end)
            {
                continue;
            }
            out.push(PiiMatch { kind, span });
        }
    }
    out.sort_by_key(|m| m.span.start);
    out
}

/// `text` with every match replaced by its placeholder.
pub fn redact(text: &str, matches: &[PiiMatch]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in matches {
        if m.span.start < at || m.span.end > text.len() {
            continue;
        }
        out.push_str(&text[at..m.span.start]);
        out.push_str(m.kind.placeholder());
        at = m.span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_redacts_each_kind() {
        let t = "Mail jane.doe@gmail.com or call (415) 555-0132; SSN 123-45-6789, \
                 card 4111 1111 1111 1111, host 192.168.1.20. Not a card: 1234 5678 9012 3456.";
        let m = find(t, &PiiKind::ALL);
        let kinds: Vec<PiiKind> = m.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            vec![
                PiiKind::Email,
                PiiKind::Phone,
                PiiKind::Ssn,
                PiiKind::Card,
                PiiKind::Ip
            ]
        );
        let r = redact(t, &m);
        assert!(
            r.contains("Mail [EMAIL] or call [PHONE]; SSN [SSN], card [CARD], host [IP]."),
            "{r}"
        );
        assert!(r.contains("1234 5678 9012 3456"), "{r}");
    }

    #[test]
    fn ordinary_numbers_are_not_pii() {
        assert!(find(
            "In 1969, 3 of 12 astronauts; version 2.0.1; 10-20 people",
            &PiiKind::ALL
        )
        .is_empty());
    }
}
