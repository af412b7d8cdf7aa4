//! Text normalisation against obfuscation, keeping a map back to the original.
//!
//! Classifiers and rules see one canonical form: compatibility-decomposed (full-width
//! letters, ligatures and mathematical alphabets become plain letters), accents
//! stripped, lower-cased, homoglyphs (Cyrillic `а`, Greek `ο`…) mapped to Latin,
//! leetspeak undone inside words (`k1ll` → `kill`), zero-width and other invisible
//! characters removed, every other non-alphanumeric run turned into one space, and
//! runs of three or more single letters joined (`k i l l`, `k.i.l.l` → `kill`).
//!
//! Every byte of the normalised text remembers which span of the original produced
//! it, so a match found in the canonical form can be redacted in the original.

use std::ops::Range;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Normalised text and, per byte of it, the byte span of the original it came from.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    /// The canonical form: lowercase ASCII-ish words separated by single spaces.
    pub text: String,
    origin: Vec<(u32, u32)>,
}

impl Normalized {
    /// The original byte range behind normalised bytes `range`.
    pub fn original_span(&self, range: Range<usize>) -> Option<Range<usize>> {
        if range.is_empty() || range.end > self.origin.len() {
            return None;
        }
        let start = self.origin[range.start].0 as usize;
        let end = self.origin[range.end - 1].1 as usize;
        Some(start..end.max(start))
    }
}

/// Characters that render as nothing and are used to split words invisibly.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{E0000}'..='\u{E007F}')
}

/// Letters from other scripts that look like Latin ones.
fn homoglyph(c: char) -> char {
    match c {
        'а' | 'α' | 'ɑ' => 'a',
        'в' | 'β' | 'ь' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' | 'ё' | 'є' => 'e',
        'һ' => 'h',
        'і' | 'ι' | 'ї' | 'ı' => 'i',
        'ј' => 'j',
        'κ' | 'к' => 'k',
        'м' => 'm',
        'η' | 'п' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'μ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' | 'ш' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'ʐ' => 'z',
        _ => c,
    }
}

/// What a leetspeak symbol stands for inside a word.
fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => return None,
    })
}

/// Normalises `input` (see the module documentation).
pub fn normalize(input: &str) -> Normalized {
    // 1. Decompose, strip marks and invisibles, lowercase, map homoglyphs.
    let mut chars: Vec<(char, u32, u32)> = Vec::with_capacity(input.len());
    for (i, c) in input.char_indices() {
        if invisible(c) {
            continue;
        }
        let (s, e) = (i as u32, (i + c.len_utf8()) as u32);
        decompose_compatible(c, |d| {
            if is_combining_mark(d) || invisible(d) {
                return;
            }
            for l in d.to_lowercase() {
                chars.push((homoglyph(l), s, e));
            }
        });
    }
    // 2. Undo leetspeak inside words that also contain letters.
    let is_wordish = |c: char| c.is_alphanumeric() || leet(c).is_some();
    let mut i = 0;
    while i < chars.len() {
        if !is_wordish(chars[i].0) {
            i += 1;
            continue;
        }
        let mut start = i;
        while i < chars.len() && is_wordish(chars[i].0) {
            i += 1;
        }
        // Punctuation-like symbols at a word's edges are punctuation ("apples!").
        let edge = |c: char| matches!(c, '!' | '|' | '+');
        let mut end = i;
        while end > start && edge(chars[end - 1].0) {
            end -= 1;
        }
        while start < end && edge(chars[start].0) {
            start += 1;
        }
        let word = &mut chars[start..end];
        let letters = word.iter().filter(|c| c.0.is_alphabetic()).count();
        if letters > 0 && letters < word.len() {
            for c in word.iter_mut() {
                if let Some(l) = leet(c.0) {
                    c.0 = l;
                }
            }
        }
    }
    // 3. Words of alphanumerics separated by single spaces.
    let mut words: Vec<Vec<(char, u32, u32)>> = Vec::new();
    let mut cur = Vec::new();
    for c in chars {
        if c.0.is_alphanumeric() {
            cur.push(c);
        } else if !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    // 4. Join runs of three or more single-letter words ("k i l l").
    let mut joined: Vec<Vec<(char, u32, u32)>> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let mut j = i;
        while j < words.len() && words[j].len() == 1 {
            j += 1;
        }
        if j - i >= 3 {
            joined.push(words[i..j].iter().flatten().copied().collect());
            i = j;
        } else {
            joined.push(std::mem::take(&mut words[i]));
            i += 1;
        }
    }
    let mut out = Normalized::default();
    for (k, w) in joined.iter().enumerate() {
        if k > 0 {
            let prev = out.origin.last().copied().unwrap_or((0, 0));
            out.text.push(' ');
            out.origin.push((prev.1, prev.1));
        }
        for &(c, s, e) in w {
            out.text.push(c);
            for _ in 0..c.len_utf8() {
                out.origin.push((s, e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obfuscations_normalise_to_the_plain_word() {
        for s in [
            "KILL",
            "k1ll",
            "k i l l",
            "k.i.l.l",
            "k\u{200B}ill",
            "kіll", // Cyrillic і
            "ｋｉｌｌ",
            "kíll",
            "𝐤𝐢𝐥𝐥",
        ] {
            assert_eq!(normalize(s).text, "kill", "{s:?}");
        }
        assert_eq!(normalize("I have 4 apples!").text, "i have 4 apples");
        assert_eq!(normalize("h0w t0 m4ke a b0mb").text, "how to make a bomb");
    }

    #[test]
    fn spans_map_back_to_the_original() {
        let src = "Call me at J\u{200B}OHN now";
        let n = normalize(src);
        let at = n.text.find("john").expect("found");
        let span = n.original_span(at..at + 4).expect("span");
        assert_eq!(&src[span], "J\u{200B}OHN");
    }
}
