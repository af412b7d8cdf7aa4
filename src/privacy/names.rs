//! Recognizers for names and places: gazetteers (given names, family names,
//! places; `safety/pii/`), capitalisation and context, plus street-address patterns.
//!
//! Why gazetteers and not a neural NER model: the anonymizer runs before every
//! write, including every tracing line, and must handle more than 20,000 texts per
//! second on one thread; a small NER model runs at hundreds. Measured on our
//! synthetic set (docs/benchmarks.md), gazetteers with context reach the recall we
//! need for chat text, where names mostly follow cues ("my name is", "Dear", titles)
//! or are capitalised pairs of a known given and family name.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;

use super::entity::{Entity, Span};

const FIRST: &str = include_str!("../../safety/pii/first_names.txt");
const LAST: &str = include_str!("../../safety/pii/last_names.txt");
const PLACES: &str = include_str!("../../safety/pii/places.txt");
const COMMON: &str = include_str!("../../safety/pii/common_words.txt");

/// The word lists.
pub struct Gazetteers {
    first: HashSet<String>,
    last: HashSet<String>,
    places: HashSet<String>,
    /// First words of multi-word places ("new" for "new york").
    place_heads: HashSet<String>,
    common: HashSet<String>,
}

fn set(text: &str) -> HashSet<String> {
    text.lines()
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

impl Gazetteers {
    /// The lists compiled into the binary.
    pub fn builtin() -> &'static Gazetteers {
        static G: OnceLock<Gazetteers> = OnceLock::new();
        G.get_or_init(|| {
            let common = set(COMMON);
            let keep = |s: HashSet<String>| -> HashSet<String> {
                s.into_iter().filter(|w| !common.contains(w)).collect()
            };
            let places = keep(set(PLACES));
            let place_heads = places
                .iter()
                .filter_map(|p| p.split_once(' ').map(|(h, _)| h.to_string()))
                .collect();
            Gazetteers {
                first: keep(set(FIRST)),
                last: keep(set(LAST)),
                places,
                place_heads,
                common,
            }
        })
    }
}

/// The form gazetteer entries are written in: no accents, lower case, apostrophes
/// and hyphens as spaces ("O'Brien" → "o brien", "Bùi" → "bui").
fn key(word: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    if word.is_ascii() {
        return word
            .bytes()
            .map(|b| match b {
                b'\'' | b'-' => ' ',
                b => b.to_ascii_lowercase() as char,
            })
            .collect();
    }
    let mut out = String::with_capacity(word.len());
    for c in word
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
    {
        // Letters that do not decompose, spelled as the gazetteers spell them.
        match c {
            '\'' | '’' | '-' => out.push(' '),
            'ð' | 'đ' => out.push('d'),
            'þ' => out.push_str("th"),
            'ß' => out.push_str("ss"),
            'ø' => out.push('o'),
            'æ' => out.push_str("ae"),
            'œ' => out.push_str("oe"),
            'ł' => out.push('l'),
            'ı' => out.push('i'),
            c => out.push(c),
        }
    }
    out
}

/// A word of the text: byte range and whether it starts with a capital.
struct Word<'a> {
    start: usize,
    end: usize,
    text: &'a str,
    lower: String,
    cap: bool,
    /// All capitals ("UK", "IBAN").
    acronym: bool,
    /// First word of a sentence or line (capitalisation says little).
    sentence_start: bool,
}

fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut iter = text.char_indices().peekable();
    let mut sentence_start = true;
    while let Some((i, c)) = iter.next() {
        if c.is_alphabetic() {
            let start = i;
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = iter.peek() {
                let joins = (d == '\'' || d == '’' || d == '-')
                    && text[j + d.len_utf8()..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphabetic);
                if d.is_alphabetic() || joins {
                    end = j + d.len_utf8();
                    iter.next();
                } else {
                    break;
                }
            }
            let w = &text[start..end];
            out.push(Word {
                start,
                end,
                text: w,
                lower: key(w),
                cap: c.is_uppercase()
                    && !(w.chars().count() >= 2 && w.chars().all(|c| !c.is_lowercase())),
                acronym: w.chars().count() >= 2 && w.chars().all(|c| !c.is_lowercase()),
                sentence_start,
            });
            sentence_start = false;
        } else if matches!(c, '.' | '!' | '?' | '\n' | ':' | '"' | '“') {
            sentence_start = true;
        }
    }
    out
}

/// Given names in the lists that, standing alone, are more often something else:
/// month and day abbreviations, card brands, cues.
const NOT_ALONE: &[&str] = &[
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon",
    "tue", "wed", "thu", "fri", "sat", "sun", "visa", "fax", "tel", "ref", "nr",
];

const TITLES: &[&str] = &[
    "mr",
    "mrs",
    "ms",
    "miss",
    "mx",
    "dr",
    "prof",
    "professor",
    "sir",
    "madam",
    "dame",
    "lord",
    "lady",
    "herr",
    "frau",
    "monsieur",
    "madame",
    "mme",
    "señor",
    "señora",
    "sr",
    "sra",
    "mister",
];

/// Phrases after which a name is expected: any capitalised word that follows is
/// taken as a name.
const NAME_CUES: &[&str] = &[
    "my name is",
    "name is",
    "i am",
    "i'm",
    "call me",
    "dear",
    "contact",
    "cc",
    "regards",
    "thanks",
    "thank you",
    "sincerely",
    "cheers",
    "best",
    "name",
    "full name",
    "signed",
    "patient",
    "employee",
    "customer",
    "named",
    "called",
    "ask for",
    "speak to",
    "talk to",
    "cardholder",
    "card holder",
    "account holder",
    "applicant",
    "beneficiary",
    "recipient",
    "sender",
    "author",
    "attn",
    "attention",
    "owner",
    "tenant",
    "passenger",
    "student",
    "assignee",
    "reviewer",
    "approved by",
    "submitted by",
    "hi",
    "hello",
    "hey",
    "call",
    "remind",
    "ping",
    "message",
    "text",
    "email",
    "invite",
    "thank",
    "meet",
    "driver",
    "signed by",
    "assigned to",
    "addressed to",
    "contact person",
    "ship to",
    "deliver to",
    "passenger",
    "payee",
    "registrant",
    "boarding pass for",
    "check with",
    "loop in",
    "talked to",
    "hey it's",
    "guardian",
    "insured",
    "holder",
    "traveller",
    "traveler",
    "member",
    "parent",
    "spouse",
];

/// Verbs after which a capitalised word that opens a sentence is a person ("Ernő
/// said", "Kulla will cover", "Nozima wants").
const PERSON_VERBS: &[&str] = &[
    "said",
    "says",
    "thinks",
    "wants",
    "agreed",
    "asked",
    "told",
    "mentioned",
    "suggested",
    "wrote",
    "replied",
    "confirmed",
    "promised",
    "emailed",
    "texted",
    "knows",
    "prefers",
    "will",
    "can",
    "is out",
    "is back",
    "has left",
    "needs",
];

/// Phrases after which any capitalised word is a place ("grew up in Tlmače").
const STRONG_PLACE_CUES: &[&str] = &[
    "grew up in",
    "based in",
    "born in",
    "moved to",
    "moved from",
    "relocating to",
    "relocate to",
    "weather in",
    "warehouse in",
    "office in",
    "visiting",
    "citizen of",
    "raised in",
    "lives in",
    "live in",
    "living in",
    "located in",
    "flew to",
    "trip to",
    "travelling to",
    "traveling to",
];

/// Weaker cues: only known given or family names count after them.
const WEAK_NAME_CUES: &[&str] = &[
    "this is",
    "with",
    "by",
    "and",
    "met",
    "son",
    "daughter",
    "wife",
    "husband",
    "friend",
    "colleague",
    "boss",
    "manager",
    "mother",
    "father",
    "brother",
    "sister",
    "im",
    "ask",
    "tell",
    "email",
    "ping",
    "from",
    "to",
    "client",
    "user",
    "guest",
];

const PLACE_CUES: &[&str] = &[
    "in",
    "at",
    "near",
    "visit",
    "visiting",
    "visited",
    "moved to",
    "live in",
    "based in",
    "lives in",
    "located in",
    "born in",
    "city of",
    "flew to",
    "trip to",
    "outside",
    "went to",
    "travel to",
    "travelling to",
    "traveling to",
    "flying to",
    "fly to",
    "relocating to",
    "relocate to",
    "around",
    "from",
];

fn ends_with_cue(text: &str, start: usize, cues: &[&str]) -> bool {
    let mut b = start.saturating_sub(24);
    while !text.is_char_boundary(b) {
        b -= 1;
    }
    let before = text[b..start]
        .to_lowercase()
        .trim_end_matches([' ', ',', ':', '\t', '\n', '\r', '-', '|', '"', '\''])
        .to_string();
    cues.iter().any(|c| {
        before.ends_with(c)
            && before[..before.len() - c.len()]
                .chars()
                .next_back()
                .is_none_or(|p| !p.is_alphanumeric())
    })
}

fn street_patterns() -> &'static [Regex] {
    static RES: OnceLock<Vec<Regex>> = OnceLock::new();
    RES.get_or_init(|| {
        let suffix = r"(?:,\s*(?:\d{4,5}\s+)?[A-ZÀ-Ý][\w'.-]+(?:\s[A-ZÀ-Ý][\w'.-]+){0,2})?(?:,\s*[A-Z]{2}\b(?:\s+\d{5}(?:-\d{4})?)?)?(?:\s+[A-Z]{2,3}\s+\d{4}\b)?(?:\s+\d{5}(?:-\d{4})?)?";
        [
            format!(r"\b\d{{1,5}}[A-Za-z]?(?:-\d{{1,5}})?\s+(?:[A-Z0-9][\w'.-]*\s+){{0,4}}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Way|Terrace|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Close|Crescent|Row|Trail|Alley|Mall|Esplanade|Parade|Quay|Walk|Market|Gardens|Green|Park|Grove|Mews)\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?(?:,?\s+(?:Apt|Suite|Unit|Flat)\.?\s*#?\w+)?{suffix}"),
            format!(r"(?i:\b\d{{1,5}}[a-z]?,?\s+(?:rue|avenue|boulevard|bd|via|viale|piazza|calle|avenida|rua|chemin|allée|place|quai|impasse))\s+(?:(?:de|du|des|d'|la|le|del|della|di|da|do|dos)\s+)*[A-ZÀ-Ýa-zà-ÿ][\w'-]+(?:\s+[A-ZÀ-Ý][\w'-]+){{0,3}}{suffix}"),
            format!(r"\b(?:Calle|Avenida|Rua|Via|Viale|Piazza|Plaza|Paseo|Carrer|Rue|Avenue|Praça|Largo|Corso)\s+(?:(?:de|del|de la|di|da|do|dos|das|della|des|du)\s+)*[A-ZÀ-Ý][\w'-]+(?:\s+[A-ZÀ-Ý][\w'-]+){{0,3}},?\s+\d{{1,5}}[a-zA-Z]?{suffix}"),
            format!(r"\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|platz|gasse|allee|ring|damm|gracht|laan|straat|plein|vej|gatan|gata)\s+\d{{1,5}}[a-z]?{suffix}"),
            // One-word street names by their ending, in many languages ("Oostvaardersdijk
            // 705", "Orisaarenbulevardi 70", "Günay Sokağı 81").
            format!(r"\b(?:\p{{Lu}}[\w'-]*[ \t]+)?\p{{Lu}}[\w'-]*(?:straße|strasse|weg|platz|gasse|allee|damm|gracht|laan|straat|plein|singel|dijk|kade|vej|gade|gatan|vägen|veien|gata|katu|tie|kuja|bulevardi|sokağı|sokak|caddesi|utca|útja|ulica|cesta|street|vegen|stræde|torget|gränd|stig|väg|vei|park|plads|tänav|iela|gatve)[ \t]+\d{{1,5}}[a-zA-Z]?{suffix}"),
            r"\b(?:P\.?O\.?\s*Box|Postfach)\s+\d{1,6}\b".to_string(),
            // A street line with a unit ("76 Rita Path Apt. 318").
            r"\b\d{1,6}[ \t]+(?:[A-Z][\w'.-]*[ \t]+){1,4}(?:Apt\.|Suite|Ste\.)[ \t]*\d+[A-Z]?\b".to_string(),
            // US military mail: "USNS Kleist / FPO AP 69779", "PSC 1234, Box 5678 / APO AA 12345".
            r"\b(?:(?:USNS|USNV|USS|USCGC)\s+[A-Z][a-z]+|(?:PSC|Unit|CMR)\s+\d{3,4},?\s+Box\s+\d{3,4})(?:\s*[/,\n]\s*|\s+)(?:APO|FPO|DPO)\s+(?:AA|AE|AP)\s+\d{5}\b|\b(?:APO|FPO|DPO)\s+(?:AA|AE|AP)\s+\d{5}\b".to_string(),
            // A unit alone ("Suite 254", "Flat 0", "Studio 60J", "Piano 1").
            r"\b(?:Suite|Apt\.|Apartment|Flat|Studio|Piano|Appartamento|Wohnung)[ \t]+#?\d{1,3}[A-Z]?\b".to_string(),
            // Polish and similar prefixes: "ul. Asnyka Adama 82", "al. Jana Pawła II 12/4".
            format!(r"\b(?:ul|al|pl|os|ulica|aleja)\.?[ \t]+\p{{Lu}}[\w'.-]*(?:[ \t]+[\w'.-]+){{0,3}}[ \t]+\d{{1,4}}[a-zA-Z]?(?:[ \t]*/[ \t]*\d{{1,4}})?{suffix}"),
            // Czech and Slovak prepositions: "U Obůrky 749", "Nad Zátiším 5", "Ke Smolíku 1101".
            format!(r"\b(?:U|Nad|Pod|Na|Ke|K|Za|Pri|Pod|Před)[ \t]+\p{{Lu}}[\w'-]+(?:[ \t]+\p{{Lu}}?[\w'-]+)?[ \t]+\d{{1,5}}(?:/\d{{1,4}})?[a-z]?{suffix}"),
            format!(r"\b(?:Am|An der|Im|Auf der|Zum|Zur|In der)\s+[A-ZÄÖÜ][\wäöüß-]+\s+\d{{1,5}}[a-z]?{suffix}"),
        ]
        .iter()
        .map(|p| Regex::new(p).unwrap_or_else(|e| panic!("built-in address pattern: {e}")))
        .collect()
    })
}

/// A whole address line whose shape says what it is: the street (its number before
/// or after the name), then a comma or line break, then a postcode and a city in
/// either order ("833 Lyberget, 5290 Vennesla", "Lizesingel 0, 4596, Falmagne",
/// "783 Matthew Lock, Valerieburgh, ME 91723", "2 Russell Hill, North George, BL97
/// 1NW"). Words stay on one line until the separator, so a name on the line above
/// is not swallowed.
fn address_line() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let word = r"\p{Lu}[\w'.-]*";
        let postcode = r"(?:\d{4,5}(?:-\d{3,4})?|\d{3}[ ]\d{2}|\d{2}-\d{3}|\d{4}[ ]?[A-Z]{2}|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d)";
        let city = format!(r"{word}(?:[ \t-]{word}){{0,2}}");
        let street = format!(
            r"(?:\d{{1,6}}[a-zA-Z]?[ \t]+(?:{word}[ \t]+){{0,4}}{word}|{word}(?:[ \t]+[\w'.-]+){{0,4}},?[ \t]+\d{{1,5}}[a-zA-Z]?(?:[/-]\d{{1,4}})?)(?:[ \t]+(?:Apt\.?|Suite|Flat|Unit)[ \t]*\w+)?"
        );
        let sep = r"(?:,[ \t]*|[ \t]*\n[ \t]*)";
        let locality = format!(r"(?:{city},[ \t]*)?");
        let tail = format!(
            r"(?:{locality}{postcode}[ \t]+{city}|{locality}{city}(?:,?[ \t]+[A-Z]{{2}})?,?[ \t]+{postcode})"
        );
        Regex::new(&format!(r"\b{street}{sep}{tail}\b"))
            .unwrap_or_else(|e| panic!("built-in address pattern: {e}"))
    })
}

/// A CSV row that starts with two name cells: `Milada,Černý,"Nad Zátiším 5, …"`.
fn csv_name_cells() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?m)(?:^|: )(\p{Lu}[\p{L}'’-]+),(\p{Lu}[\p{L}'’-]+(?: \p{Lu}?[\p{L}'’-]+){0,2}),",
        )
        .unwrap_or_else(|e| panic!("built-in CSV name pattern: {e}"))
    })
}

/// PERSON and LOCATION spans in `text`.
pub fn find(g: &Gazetteers, text: &str, out: &mut Vec<Span>) {
    for c in csv_name_cells().captures_iter(text) {
        let (Some(first), Some(last)) = (c.get(1), c.get(2)) else {
            continue;
        };
        let given = key(first.as_str());
        let family = key(last.as_str().rsplit(' ').next().unwrap_or(""));
        // One of the two must be a known name, and neither an ordinary word (a
        // header such as "Name,Email,").
        if (g.first.contains(&given) || g.last.contains(&family))
            && !g.common.contains(&given)
            && !g.common.contains(&family)
        {
            for m in [first, last] {
                out.push(Span {
                    entity: Entity::Person,
                    start: m.start(),
                    end: m.end(),
                    score: 0.8,
                });
            }
        }
    }
    for m in address_line().find_iter(text) {
        // "Chapter 12, 2020 Edition": the shape without the words of an address.
        let first = key(m.as_str().split_whitespace().next().unwrap_or(""));
        let last = key(m.as_str().split_whitespace().next_back().unwrap_or(""));
        if g.common.contains(&last)
            || (!first.starts_with(|c: char| c.is_ascii_digit()) && g.common.contains(&first))
        {
            continue;
        }
        out.push(Span {
            entity: Entity::Location,
            start: m.start(),
            end: m.end(),
            score: 0.85,
        });
    }
    for re in street_patterns() {
        for m in re.find_iter(text) {
            out.push(Span {
                entity: Entity::Location,
                start: m.start(),
                end: m.end(),
                score: 0.85,
            });
        }
    }
    let ws = words(text);
    let mut i = 0;
    while i < ws.len() {
        let w = &ws[i];
        let lower = w.lower.trim_end_matches("'s").trim_end_matches("’s");
        // Titles: "Dr. Okafor", "Mrs Anna Berg".
        let particle = |x: &Word| {
            matches!(
                x.lower.as_str(),
                "van"
                    | "von"
                    | "de"
                    | "da"
                    | "del"
                    | "der"
                    | "den"
                    | "bin"
                    | "al"
                    | "el"
                    | "la"
                    | "le"
                    | "di"
                    | "du"
                    | "ter"
                    | "dos"
                    | "das"
            )
        };
        if TITLES.contains(&lower) && ws.get(i + 1).is_some_and(|n| n.cap || particle(n)) {
            let mut j = i + 1;
            while j < ws.len()
                && j < i + 5
                && ((ws[j].cap && !g.common.contains(&ws[j].lower))
                    || (particle(&ws[j]) && ws.get(j + 1).is_some_and(|x| x.cap)))
            {
                j += 1;
            }
            if j > i + 1 {
                out.push(Span {
                    entity: Entity::Person,
                    start: ws[i + 1].start,
                    end: ws[j - 1].end,
                    score: 0.9,
                });
                i = j;
                continue;
            }
        }
        // Places: the longest known place of up to three capitalised words (or
        // lower-case ones right after a place cue: "a store in sydney").
        let glued = text[w.end..].starts_with(['-', '=', '_'])
            || text[..w.start].ends_with(['=', '_', '/', '-']);
        // A lower-case word can only start a place right after a place cue, and only
        // if it is a place or the first word of one: check the sets before the cue.
        let lower_candidate = !w.cap
            && !w.acronym
            && w.lower.len() > 2
            && (g.places.contains(&w.lower) || g.place_heads.contains(&w.lower));
        if (w.cap || w.acronym || lower_candidate) && !glued {
            let mut matched = None;
            for n in (1..=3).rev() {
                if i + n > ws.len()
                    || !ws[i..i + n]
                        .iter()
                        .all(|x| x.cap || x.acronym || !w.cap || x.lower == "de" || x.lower == "of")
                {
                    continue;
                }
                let hit = if n == 1 {
                    g.places.contains(&w.lower)
                } else {
                    g.place_heads.contains(&w.lower)
                        && g.places.contains(
                            &ws[i..i + n]
                                .iter()
                                .map(|x| x.lower.as_str())
                                .collect::<Vec<_>>()
                                .join(" "),
                        )
                };
                if hit {
                    matched = Some(n);
                    break;
                }
            }
            if let Some(n) = matched {
                let place_cue = ends_with_cue(text, w.start, PLACE_CUES);
                // Part of another proper noun ("Wells Fargo", "Project Phoenix").
                let in_phrase = i > 0
                    && ws[i - 1].cap
                    && ws[i].start - ws[i - 1].end <= 1
                    && !matches!(
                        ws[i - 1].lower.as_str(),
                        "the"
                            | "a"
                            | "an"
                            | "in"
                            | "at"
                            | "to"
                            | "from"
                            | "of"
                            | "and"
                            | "near"
                            | "visit"
                            | "visited"
                            | "via"
                    )
                    && !g.places.contains(&ws[i - 1].lower)
                    && !TITLES.contains(&ws[i - 1].lower.as_str());
                let is_name = n == 1
                    && (g.first.contains(lower)
                        || ws
                            .get(i + 1)
                            .is_some_and(|x| x.cap && g.last.contains(&x.lower)));
                let ok = if w.cap || w.acronym {
                    place_cue || (!is_name && !in_phrase)
                } else {
                    place_cue
                };
                if ok {
                    out.push(Span {
                        entity: Entity::Location,
                        start: w.start,
                        end: ws[i + n - 1].end,
                        score: if place_cue { 0.85 } else { 0.7 },
                    });
                    i += n;
                    continue;
                }
            }
        }
        // Any capitalised words right after a strong place cue ("grew up in Tlmače",
        // "relocating to Pamela Ville").
        if (w.cap || w.acronym)
            && !g.common.contains(&w.lower)
            && ends_with_cue(text, w.start, STRONG_PLACE_CUES)
        {
            let mut j = i + 1;
            while j < ws.len()
                && j < i + 4
                && ws[j].cap
                && text[ws[j - 1].end..ws[j].start]
                    .trim_matches([' ', '-'])
                    .is_empty()
                && ws[j].start - ws[j - 1].end <= 1
                && !g.common.contains(&ws[j].lower)
            {
                j += 1;
            }
            out.push(Span {
                entity: Entity::Location,
                start: w.start,
                end: ws[j - 1].end,
                score: 0.8,
            });
            i = j;
            continue;
        }
        // People: a known given name, or a capitalised word before a known family
        // name, or any name after a cue ("my name is ...", "cc: li wei").
        let known_first = g.first.contains(lower);
        let known = known_first || g.last.contains(lower);
        if !w.cap && !known && !w.acronym {
            i += 1;
            continue;
        }
        let cue = ends_with_cue(text, w.start, NAME_CUES);
        let weak_cue = cue || ends_with_cue(text, w.start, WEAK_NAME_CUES);
        // The family name may follow a middle initial ("Sofia H. Konstantinou").
        let after = match ws.get(i + 1) {
            Some(n) if n.text.chars().count() == 1 && n.cap && text[n.end..].starts_with(". ") => {
                i + 2
            }
            _ => i + 1,
        };
        let next_is_last = ws.get(after).is_some_and(|n| {
            (n.cap || weak_cue)
                && g.last.contains(n.lower.trim_end_matches(" s"))
                && n.start - ws[after - 1].end <= 2
        });
        const FUNCTION: &[&str] = &[
            "the", "a", "an", "this", "that", "these", "those", "our", "my", "your", "his", "her",
            "their", "its", "we", "i", "you", "he", "she", "they", "it", "and", "or", "but", "if",
            "in", "on", "at", "for", "of", "to", "from", "by", "with", "as", "is", "are", "was",
        ];
        // After a cue, a lower-case name only counts when nothing but spaces or a
        // colon separates them ("cc: li wei", not the CSV header "customer,iban").
        let tight = {
            let mut b = w.start.saturating_sub(2);
            while !text.is_char_boundary(b) {
                b -= 1;
            }
            !text[b..w.start].contains([',', '\n'])
        };
        let next_cap = ws.get(i + 1).is_some_and(|n| n.cap && n.start - w.end <= 1);
        // Names in capitals ("WHITAKER, JONATHAN", "JONATHAN WHITAKER"): two known
        // name words next to each other, at most a comma between them.
        let cue_here = w.acronym && ends_with_cue(text, w.start, NAME_CUES);
        if w.acronym && (known || cue_here) && w.text.chars().count() > 1 {
            if let Some(n) = ws.get(i + 1).filter(|n| {
                n.acronym
                    && n.text.chars().count() > 1
                    && (cue_here || g.first.contains(&n.lower) || g.last.contains(&n.lower))
                    && matches!(text[w.end..n.start].trim_matches(' '), "" | ",")
                    && n.start - w.end <= 2
            }) {
                out.push(Span {
                    entity: Entity::Person,
                    start: w.start,
                    end: n.end,
                    score: 0.8,
                });
                i += 2;
                continue;
            }
        }
        // A known given name on its own ("Jennifer will send it", "ask Thomas"):
        // the lists hold no common English word, so a capitalised one is a name.
        // Not part of a product or a date: no capitalised word, digit, "/" or mark
        // after it ("Iris Graphics", "Vega 56", "Visa/MC"), no number before ("30 Sep").
        let alone = w.cap
            && known_first
            && w.text.chars().count() > 2
            && !g.common.contains(lower)
            && !g.places.contains(lower)
            && !NOT_ALONE.contains(&lower)
            && !ws.get(i + 1).is_some_and(|n| {
                n.start - w.end <= 1 && (n.acronym || (n.cap && g.common.contains(&n.lower)))
            })
            && !text[w.end..].starts_with(['/', '®', '™', '-'])
            && !text[w.end..]
                .trim_start_matches(' ')
                .starts_with(|c: char| c.is_ascii_digit())
            && !text[..w.start]
                .trim_end_matches(' ')
                .ends_with(|c: char| c.is_ascii_digit());
        let starts = !w.acronym
            && ((w.cap
                && known_first
                && (next_is_last || weak_cue || (next_cap && !w.sentence_start)))
                || (w.cap && next_is_last && !FUNCTION.contains(&lower))
                || (weak_cue
                    && (w.cap || tight)
                    && (known_first || g.last.contains(lower))
                    && !g.common.contains(lower))
                || (w.cap && cue && !g.common.contains(lower) && w.text.chars().count() > 1)
                || alone
                || (w.cap
                    && w.sentence_start
                    && !g.common.contains(lower)
                    && !g.places.contains(lower)
                    && w.text.chars().count() > 2
                    && {
                        let rest = text[w.end..].trim_start_matches(' ');
                        PERSON_VERBS.iter().any(|v| {
                            rest.starts_with(v)
                                && !rest[v.len()..].starts_with(|c: char| c.is_alphanumeric())
                        })
                    }));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < ws.len() && j < i + 4 {
            let n = &ws[j];
            let gap = &text[ws[j - 1].end..n.start];
            // A middle initial ("Leonor D. Costa") is part of the name.
            let initial = ws[j - 1].text.chars().count() == 1 && gap == ". ";
            // "Registrant: Sooksawang, Thanatcha": family name, comma, given name.
            let inverted = cue && j == i + 1 && gap == ", " && n.cap && g.first.contains(&n.lower);
            if inverted {
                j += 1;
                break;
            }
            if !initial && (gap.len() > 2 || gap.contains(['\n', ',', '.', ';', '|'])) {
                break;
            }
            let particle = particle(n) && ws.get(j + 1).is_some_and(|x| x.cap);
            let single_initial =
                n.cap && n.text.chars().count() == 1 && text[n.end..].starts_with('.');
            let part = if single_initial {
                true
            } else if n.cap {
                !g.common.contains(&n.lower) || g.last.contains(&n.lower)
            } else {
                (cue || !w.cap) && (g.last.contains(&n.lower) || g.first.contains(&n.lower))
            };
            if particle || part {
                j += 1;
            } else {
                break;
            }
        }
        let full = j > i + 1;
        let score = if full || cue {
            0.85
        } else if weak_cue {
            0.7
        } else {
            0.55
        };
        out.push(Span {
            entity: Entity::Person,
            start: w.start,
            end: ws[j - 1].end,
            score,
        });
        i = j;
    }
}
