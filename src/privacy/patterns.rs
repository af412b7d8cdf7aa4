//! Recognizers for structured data: regular expressions for candidates, then
//! validators (checksums, valid ranges) and context to cut false positives.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};
use sha2::{Digest, Sha256};

use super::entity::{Entity, Span};

/// A validator: `(text, match, start, end)` → the span to keep and its score.
type Check = fn(&str, &str, usize, usize) -> Option<(usize, usize, f32)>;

/// One candidate pattern and how to validate what it finds.
struct Pattern {
    entity: Entity,
    re: Regex,
    check: Check,
}

fn ok(_: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let _ = m;
    Some((s, e, 0.95))
}

/// The text just before `start` (up to `n` bytes), lower-cased.
fn before(text: &str, start: usize, n: usize) -> String {
    let mut b = start.saturating_sub(n);
    while !text.is_char_boundary(b) {
        b -= 1;
    }
    text[b..start].to_lowercase()
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Luhn checksum over digits.
pub fn luhn(ds: &[u32]) -> bool {
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

/// Whether the digits have a known issuer prefix and length.
fn card_issuer(ds: &[u32]) -> bool {
    let n = ds.len();
    let p = |k: usize| ds.iter().take(k).fold(0u32, |a, d| a * 10 + d);
    let (p1, p2, p3, p4, p6) = (p(1), p(2), p(3), p(4), p(6));
    (p1 == 4 && matches!(n, 13 | 16 | 19))
        || ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16
        || (p2 == 34 || p2 == 37) && n == 15
        || (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && (16..=19).contains(&n)
        || p2 == 35 && (16..=19).contains(&n)
        || (p4 == 2131 || p4 == 1800) && n == 15
        || ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&n)
        || p2 == 62 && (16..=19).contains(&n)
        || (p2 == 50 || (56..=69).contains(&p2) || (622126..=622925).contains(&p6))
            && (12..=19).contains(&n)
}

/// Words near a number that make it a payment card.
const CARD_CUES: &[&str] = &[
    "card",
    "cc",
    "visa",
    "mastercard",
    "amex",
    "credit",
    "debit",
    "payment",
    "pan",
];

/// Whether `word` occurs in `text` as a whole word ("cc", not "account").
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        !text[..i].ends_with(|c: char| c.is_alphanumeric())
            && !text[i + word.len()..].starts_with(|c: char| c.is_alphanumeric())
    })
}

/// A run of 12 or more digits (spaces and dashes allowed between them) may hold a
/// card followed by more digits ("4111 1111 1111 1111 0423", a card glued to its
/// expiry): each prefix of 12 to 19 digits is tried, longest first. A prefix that
/// ends inside a group of glued digits needs a card cue before it.
fn card(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    if let Some(hit) = card_exact(text, m, s, e) {
        return Some(hit);
    }
    let cued = {
        let ctx = before(text, s, 32);
        CARD_CUES.iter().any(|w| has_word(&ctx, w))
    };
    let bytes = m.as_bytes();
    let mut count = 0;
    let mut ends = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            count += 1;
            let at_separator = bytes.get(i + 1).is_some_and(|n| matches!(n, b' ' | b'-'));
            if (12..=19).contains(&count) && (at_separator || cued) && i + 1 < bytes.len() {
                ends.push(i + 1);
            }
        }
    }
    ends.into_iter()
        .rev()
        .find_map(|end| card_exact(text, &m[..end], s, s + end))
}

fn card_exact(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let ds = digits(m);
    if !(12..=19).contains(&ds.len()) || !luhn(&ds) {
        return None;
    }
    // An issuer we do not know needs its cue right before it ("card 8196…").
    if !card_issuer(&ds) {
        let ctx = before(text, s, 16);
        if !CARD_CUES.iter().any(|w| has_word(&ctx, w)) {
            return None;
        }
    }
    // Digits inside a longer token (`xoxb-5683…-…`) are not a card; a card may be
    // followed by more digits (checked by the caller).
    let prev = text[..s].chars().next_back();
    let next = text[e..].chars().next();
    if prev.is_some_and(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '/' | '.' | '+'))
        || next.is_some_and(|c| c.is_alphabetic() || matches!(c, '_' | '/'))
    {
        return None;
    }
    let ctx = before(text, s, 24);
    if [
        "order",
        "tracking",
        "invoice",
        "ref",
        "#",
        "serial",
        "account no",
    ]
    .iter()
    .any(|w| ctx.contains(w))
        && !(ctx.contains("card")
            || ctx.contains("cc")
            || ctx.contains("visa")
            || ctx.contains("amex"))
    {
        return None;
    }
    Some((s, e, 1.0))
}

/// A card security code or expiry date: the value after its cue (`CVV: 123`,
/// `exp 09/28`), captured as group 1.
fn card_detail(_: &str, m: &str, s: usize, _e: usize) -> Option<(usize, usize, f32)> {
    static RES: OnceLock<[Regex; 2]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [CVV, EXPIRY].map(|p| Regex::new(p).unwrap_or_else(|e| panic!("built-in pattern: {e}")))
    });
    res.iter()
        .find_map(|re| re.captures(m).and_then(|c| c.get(1)))
        .map(|v| (s + v.start(), s + v.end(), 0.9))
}

const CVV: &str = r#"(?i)\b(?:cvv2?|cvc2?|cvn|cid|csc|security\s+code|card\s+verification(?:\s+(?:code|value|number))?)\b(?:\s*(?:code|number|no\.?|#))?["']?\s*(?:is\s+)?[:=#-]?\s*["']?(\d{3,4})\b"#;
const EXPIRY: &str = r#"(?i)\b(?:exp(?:iry|iration|ires)?(?:\.|\s+date)?|valid\s+(?:thru|through|until)|good\s+thru|expiry\s+date)["']?\s*(?:on\s+|is\s+)?[:=-]?\s*["']?((?:0?[1-9]|1[0-2])\s*[/-]\s*(?:20\d{2}|\d{2}))\b"#;

fn iban_len(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AE" => 23,
        "AL" => 28,
        "AT" => 20,
        "AZ" => 28,
        "BA" => 20,
        "BE" => 16,
        "BG" => 22,
        "BH" => 22,
        "BR" => 29,
        "CH" => 21,
        "CR" => 22,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "DO" => 28,
        "EE" => 20,
        "EG" => 29,
        "ES" => 24,
        "FI" => 18,
        "FO" => 18,
        "FR" => 27,
        "GB" => 22,
        "GE" => 22,
        "GI" => 23,
        "GL" => 18,
        "GR" => 27,
        "GT" => 28,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IL" => 23,
        "IS" => 26,
        "IT" => 27,
        "JO" => 30,
        "KW" => 30,
        "KZ" => 20,
        "LB" => 28,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "MK" => 19,
        "MR" => 27,
        "MT" => 31,
        "MU" => 30,
        "NL" => 18,
        "NO" => 15,
        "PK" => 24,
        "PL" => 28,
        "PS" => 29,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "RS" => 22,
        "SA" => 24,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "VG" => 24,
        "XK" => 20,
        _ => return None,
    })
}

/// ISO 13616 mod-97 check of a compact IBAN.
pub fn iban_valid(compact: &str) -> bool {
    if compact.len() < 15 || !compact.is_ascii() {
        return false;
    }
    // A known country's length, or, for a country without IBANs in the table, any
    // length an IBAN may have: the mod-97 check below still has to pass.
    match iban_len(&compact[..2]) {
        Some(n) if n != compact.len() => return false,
        None if compact.len() > 34 => return false,
        _ => {}
    }
    mod97(compact)
}

/// The ISO 13616 check digits alone, for any length.
fn mod97(compact: &str) -> bool {
    if compact.len() < 5 || !compact.is_ascii() {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Words before an account number that make a checksum-valid code an IBAN even
/// when its length does not match its country's (generated data, new formats).
const IBAN_CUES: &[&str] = &[
    "iban",
    "wire",
    "transfer",
    "beneficiary",
    "bank",
    "account",
    "pay",
    "refund",
    "deposit",
];

fn iban(text: &str, m: &str, s: usize, _e: usize) -> Option<(usize, usize, f32)> {
    // The candidate may run into a following word; keep the longest valid prefix.
    let chars: Vec<(usize, char)> = m.char_indices().collect();
    let cued = {
        let ctx = before(text, s, 40);
        IBAN_CUES.iter().any(|w| ctx.contains(w))
    };
    let mut compact = String::new();
    let (mut best, mut loose) = (None, None);
    for &(i, c) in &chars {
        if c == ' ' {
            continue;
        }
        compact.push(c);
        if iban_valid(&compact) {
            best = Some(s + i + c.len_utf8());
        } else if cued && (12..=34).contains(&compact.len()) && mod97(&compact) {
            loose = Some(s + i + c.len_utf8());
        }
    }
    best.or(loose).map(|end| (s, end, 1.0))
}

fn ipv4(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let _ = m;
    let ctx = before(text, s, 24);
    let last = ctx
        .split(|c: char| !c.is_alphanumeric())
        .rfind(|w| !w.is_empty())
        .unwrap_or_default();
    if [
        "version", "ver", "v", "release", "build", "firmware", "rev", "versions",
    ]
    .contains(&last)
        || ctx.ends_with('v')
    {
        return None;
    }
    // Part of a longer dotted number (1.2.3.4.5) is a version, not an address.
    let after = &text[e..];
    if after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if ctx.ends_with('.') {
        return None;
    }
    Some((s, e, 0.95))
}

fn ipv6(_: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    if m.matches(':').count() < 2 {
        return None;
    }
    m.parse::<std::net::Ipv6Addr>().ok().map(|_| (s, e, 0.95))
}

fn ssn(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let ds = digits(m);
    if ds.len() != 9 {
        return None;
    }
    let seps: Vec<char> = m.chars().filter(|c| !c.is_ascii_digit()).collect();
    if !(seps.is_empty() || seps == ['-', '-'] || seps == [' ', ' ']) {
        return None;
    }
    // Not a piece of a phone number ("+351 86 7003 8954").
    let before_m = text[..s].trim_end_matches([' ', '-', '.', '(', ')']);
    if before_m.ends_with(|c: char| c == '+' || c.is_ascii_digit())
        && text[..s].len() - before_m.len() <= 2
    {
        return None;
    }
    let after = &text[e..];
    if after.starts_with([' ', '-', '.']) && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let area = ds[0] * 100 + ds[1] * 10 + ds[2];
    let group = ds[3] * 10 + ds[4];
    let serial = ds[5] * 1000 + ds[6] * 100 + ds[7] * 10 + ds[8];
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    // Nine bare digits only count with context.
    if !m.contains(['-', ' ']) {
        let ctx = before(text, s, 32);
        if !["ssn", "social security", "social-security"]
            .iter()
            .any(|w| ctx.contains(w))
        {
            return None;
        }
    }
    Some((s, e, 0.95))
}

/// A phone number without its extension ("x579", "ext. 12"), which is not part of
/// the number's length.
fn without_extension(m: &str) -> &str {
    m.find(['x', 'X', 'e', 'E']).map_or(m, |i| &m[..i])
}

fn phone(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let ds = digits(without_extension(m));
    if !(8..=15).contains(&ds.len()) {
        return None;
    }
    let ctx = before(text, s, 24);
    if ["order", "invoice", "tracking", "ref", "#", "id ", "serial"]
        .iter()
        .any(|w| ctx.ends_with(w) || ctx.trim_end().ends_with(w))
    {
        return None;
    }
    // A phone number is not glued to other digits, amounts or decimal points, and
    // is not the tail of a longer run of digit groups (tracking numbers, cards).
    let mut back = text[..s].chars().rev();
    let prev = back.next();
    let prev2 = back.next();
    let mut fwd = text[e..].chars();
    let next = fwd.next();
    let next2 = fwd.next();
    let digitish = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    if digitish(prev)
        || prev.is_some_and(|c| c == '$' || c == '.' && digitish(prev2))
        || (matches!(prev, Some(',' | ' ' | '-')) && digitish(prev2))
        || digitish(next)
        || (matches!(next, Some(',' | '.' | '-')) && digitish(next2))
    {
        return None;
    }
    let score = if [
        "phone", "call", "tel", "mobile", "cell", "whatsapp", "fax", "text me", "reach",
    ]
    .iter()
    .any(|w| ctx.contains(w))
    {
        0.95
    } else {
        0.8
    };
    Some((s, e, score))
}

/// National numbers with a trunk 0 ("020 7946 0958", "01 42 68 53 00") need ten
/// or more digits, which keeps SSN-shaped and short codes out.
fn phone_national(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    if digits(m).len() < 10 {
        return None;
    }
    phone(text, m, s, e)
}

/// Nine digits in three groups (Spanish and similar mobiles): weaker evidence.
fn phone_grouped(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    phone(text, m, s, e)
        .map(|(s, e, score)| (s, e, score.min(0.6) + if score > 0.9 { 0.3 } else { 0.0 }))
}

fn url(_: &str, m: &str, s: usize, _e: usize) -> Option<(usize, usize, f32)> {
    let trimmed = m.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '\'', '"', '>']);
    (trimmed.len() > 8).then(|| (s, s + trimmed.len(), 0.9))
}

fn base58_ok(m: &str) -> bool {
    let has_upper = m.chars().any(|c| c.is_ascii_uppercase());
    let has_lower = m.chars().any(|c| c.is_ascii_lowercase());
    let has_digit = m.chars().any(|c| c.is_ascii_digit());
    has_upper && has_lower && has_digit
}

fn crypto(_: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    if m.starts_with("0x") || m.starts_with("bc1") || base58_ok(m) {
        Some((s, e, 0.9))
    } else {
        None
    }
}

fn dob(text: &str, _m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let ctx = before(text, s, 64);
    let cue = [
        "born",
        "dob",
        "d.o.b",
        "date of birth",
        "birthday",
        "birth date",
        "birthdate",
        "geboren",
        "né le",
        "née le",
        "nacido",
    ]
    .iter()
    .filter_map(|w| ctx.rfind(w).map(|i| i + w.len()))
    .max()?;
    // The cue belongs to this date only if no other date or year sits between them
    // ("born in 1980 and my appointment is on June 3").
    let between = &ctx[cue..];
    let has_year = between
        .split(|c: char| !c.is_ascii_digit())
        .any(|d| d.len() == 4);
    if has_year || between.contains("appointment") || between.contains("meeting") {
        return None;
    }
    Some((s, e, 0.85))
}

fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn secret_prefixed(_: &str, _m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    Some((s, e, 0.99))
}

/// `key = VALUE`-style secrets: the span is the value, which must look random.
fn secret_assigned(text: &str, m: &str, s: usize, _e: usize) -> Option<(usize, usize, f32)> {
    let re = assigned_value();
    let caps = re.captures(m)?;
    let v = caps.get(1)?;
    let value = v.as_str();
    let classes = [
        value.chars().any(|c| c.is_ascii_uppercase()),
        value.chars().any(|c| c.is_ascii_lowercase()),
        value.chars().any(|c| c.is_ascii_digit()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if entropy(value) < 3.0 || classes < 2 {
        return None;
    }
    let _ = text;
    Some((s + v.start(), s + v.end(), 0.9))
}

fn assigned_value() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"(?i)(?:[\w-]*(?:token|api[_-]?key|secret|password|passwd|pwd|access[_-]?key|private[_-]?key|credential)[\w-]*["']?\s*[:=]\s*["']?|bearer\s+)([A-Za-z0-9_\-./+=]{12,})"#)
            .unwrap_or_else(|e| panic!("built-in pattern: {e}"))
    })
}

/// A long random-looking token on its own: mixed case and digits, high entropy.
fn secret_bare(_: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    let upper = m.chars().any(|c| c.is_ascii_uppercase());
    let lower = m.chars().any(|c| c.is_ascii_lowercase());
    let digit = m.chars().filter(|c| c.is_ascii_digit()).count();
    (upper && lower && digit >= 3 && entropy(m) >= 4.2).then_some((s, e, 0.7))
}

/// Words that say a number is a phone number, and what may stand between them and it
/// (`Tel.`, `"phone": "`, `reach me at`, `WhatsApp`, `m:` at the start of a line).
const PHONE_CUE: &str = r#"(?:\b(?:phone|telephone|tel|mobile|mob|cell|cellphone|fax|whatsapp|direct line|desk phone|hotline|landline|call(?: me)?(?: at| on)?|reach (?:me|us|the office|him|her) (?:at|on)|my number is|contact number|callback(?: number)?|ph)|(?m:^[ \t]*[mtpf][:.]))\.?[ \t]*(?:no\.?|number|#)?["']?[ \t]*[:=]?[ \t]*["']?[ \t]*"#;

/// A number right after a phone cue, in any national format: 6 to 15 digits.
fn phone_after_cue(text: &str, m: &str, s: usize, e: usize) -> Option<(usize, usize, f32)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(&format!(r"(?i){PHONE_CUE}")).unwrap_or_else(|e| panic!("built-in pattern: {e}"))
    });
    let cue_end = re.find(m).map_or(0, |c| c.end());
    let value = &m[cue_end..];
    let n = digits(without_extension(value)).len();
    if !(6..=15).contains(&n) {
        return None;
    }
    // Dates and times are not phone numbers ("12/05/2024", "10:30").
    if value.contains(':') || value.matches('/').count() >= 2 {
        return None;
    }
    let next = text[e..].chars().next();
    if next.is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    Some((s + cue_end, e, 0.9))
}

/// A cell of a comma-separated row holding only a phone-shaped number, in a row
/// that also holds an e-mail address or under a header that names a phone column
/// ("Jane Michel,4 255 74,jane@…"): national formats too short or too plain for the
/// other patterns.
fn phone_csv_cell(text: &str, m: &str, s: usize, _e: usize) -> Option<(usize, usize, f32)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(PHONE_CELL).unwrap_or_else(|e| panic!("built-in pattern: {e}")));
    let v = re.captures(m)?.get(1)?;
    let value = v.as_str();
    let n = digits(value).len();
    if !(6..=15).contains(&n) || value.contains(':') || value.matches('/').count() >= 2 {
        return None;
    }
    // An amount ("1234.50") is not a phone number.
    if value
        .split_once('.')
        .is_some_and(|(a, b)| !a.is_empty() && b.len() == 2 && value.matches('.').count() == 1)
    {
        return None;
    }
    let line_start = text[..s].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[s..].find('\n').map_or(text.len(), |i| s + i);
    let line = &text[line_start..line_end];
    let header = text[..line_start].lines().any(|l| {
        l.split(',').any(|c| {
            let c = c.trim().to_lowercase();
            ["phone", "tel", "mobile", "telephone"].contains(&c.as_str())
        })
    });
    if line.matches(',').count() < 2 || !(header || line.contains('@')) {
        return None;
    }
    Some((s + v.start(), s + v.end(), 0.8))
}

const PHONE_CELL: &str = r"(?m)(?:^|,)[ \t]*(\+?\(?\d[\d ().\-/]{3,20}\d)[ \t]*(?:,|$)";

/// An optional extension after a phone number (`x579`, ` ext. 12`), else a word
/// boundary.
const PHONE_EXT: &str = r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6}\b|\b)";

const MONTHS: &str = "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?";

fn patterns() -> &'static (Vec<Pattern>, RegexSet) {
    static P: OnceLock<(Vec<Pattern>, RegexSet)> = OnceLock::new();
    P.get_or_init(|| {
        let specs: Vec<(Entity, String, Check)> = vec![
            (Entity::EmailAddress, r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b".into(), ok),
            (Entity::Url, r#"\b(?:https?://|www\.)[^\s<>"'`]+"#.into(), url),
            (Entity::Secret, r"\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[0-9A-Za-z]{16,}|rk_live_[0-9A-Za-z]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}|A(?:KIA|SIA)[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36})".into(), secret_prefixed),
            (Entity::Secret, r"-----BEGIN [A-Z ]*PRIVATE KEY-----".into(), secret_prefixed),
            (Entity::Secret, r#"(?i)(?:[\w-]*(?:token|api[_-]?key|secret|password|passwd|pwd|access[_-]?key|private[_-]?key|credential)[\w-]*["']?\s*[:=]\s*["']?|bearer\s+)[A-Za-z0-9_\-./+=]{12,}"#.into(), secret_assigned),
            (Entity::CreditCard, r"\b\d(?:[ -]?\d){11,}".into(), card),
            (Entity::CreditCard, CVV.into(), card_detail),
            (Entity::CreditCard, EXPIRY.into(), card_detail),
            (Entity::IbanCode, r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){8,30}\b".into(), iban),
            (Entity::UsSsn, r"\b\d{3}([- ]?)\d{2}([- ]?)\d{4}\b".into(), ssn),
            (Entity::MacAddress, r"(?i)\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b|\b[0-9a-f]{2}(?:-[0-9a-f]{2}){5}\b|\b[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}\b".into(), ok),
            (Entity::IpAddress, r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b".into(), ipv4),
            (Entity::IpAddress, r"(?i)(?:\b[0-9a-f]{1,4})?(?::{1,2}[0-9a-f]{1,4}){2,7}(?:::)?|(?i)\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6}::|::(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4}\b".into(), ipv6),
            (Entity::Crypto, r"\b(?:[13][a-km-zA-HJ-NP-Z1-9]{25,34}|bc1[ac-hj-np-z02-9]{25,87}|0x[a-fA-F0-9]{40})\b".into(), crypto),
            (Entity::DateTime, format!(r"(?i)\b(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:(?:19|20)\d{{2}}|\d{{2}})|(?:19|20)\d{{2}}[/.-]\d{{1,2}}[/.-]\d{{1,2}}|\d{{1,2}}[ -](?:{MONTHS})[ -](?:19|20)\d{{2}}|\d{{1,2}}(?:st|nd|rd|th)?(?: of)? (?:{MONTHS})\.?(?:,? (?:19|20)\d{{2}})?|(?:{MONTHS})\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? (?:19|20)\d{{2}})?)\b"), dob),
            (Entity::PhoneNumber, format!(r"(?:\+\(?\d{{1,3}}\)?|\b00[1-9]\d{{0,2}})(?:[ .-]?\(?\d{{1,5}}\)?){{1,6}}{PHONE_EXT}"), phone),
            (Entity::PhoneNumber, format!(r"(?i){PHONE_CUE}(\(?\+?\d[\d ().\-/]{{4,22}}\d){PHONE_EXT}"), phone_after_cue),
            (Entity::PhoneNumber, format!(r"(?:\b1[ .-])?(?:\(\d{{3}}\) ?|\b\d{{3}}[ .-])\d{{3}}[ .-]\d{{4}}{PHONE_EXT}"), phone),
            (Entity::PhoneNumber, r"\(\d{2,4}\)[ .-]?\d{3,5}[ .-]?\d{4}\b".into(), phone),
            (Entity::PhoneNumber, r"\b[6-9]\d{2} \d{3} \d{3}\b".into(), phone_grouped),
            (Entity::PhoneNumber, PHONE_CELL.into(), phone_csv_cell),
            (Entity::PhoneNumber, format!(r"\b0\d{{1,5}}(?:[ .-]\d{{2,8}}){{1,4}}{PHONE_EXT}|\b0\d{{9,10}}{PHONE_EXT}"), phone_national),
            (Entity::Secret, r"\b[A-Za-z0-9_-]{32,}\b".into(), secret_bare),
        ];
        let set = RegexSet::new(specs.iter().map(|(_, p, _)| p.as_str()))
            .unwrap_or_else(|e| panic!("built-in PII patterns: {e}"));
        let pats = specs
            .into_iter()
            .map(|(entity, p, check)| Pattern {
                entity,
                re: Regex::new(&p).unwrap_or_else(|e| panic!("built-in PII pattern {p}: {e}")),
                check,
            })
            .collect();
        (pats, set)
    })
}

/// Every structured entity the patterns find (may overlap; the caller resolves).
pub fn find(text: &str, out: &mut Vec<Span>) {
    let (pats, set) = patterns();
    for i in set.matches(text).iter() {
        let p = &pats[i];
        for m in p.re.find_iter(text) {
            if let Some((s, e, score)) = (p.check)(text, m.as_str(), m.start(), m.end()) {
                out.push(Span {
                    entity: p.entity,
                    start: s,
                    end: e,
                    score,
                });
            }
        }
    }
}

/// sha256 of `salt` and `value`, as hex (for the hash operator).
pub fn salted_hash(salt: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
