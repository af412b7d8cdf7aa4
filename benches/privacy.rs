//! Throughput of the anonymizer on one thread:
//!
//! ```text
//! cargo bench --bench privacy
//! ```
//!
//! Texts of about 100 tokens (450–550 characters), half with personal data and half
//! without; prints texts/s for `analyze` (find spans) and `anonymize` (find and
//! replace with `<TYPE_N>` placeholders).

use std::time::Instant;

use tether::privacy::{Anonymizer, Operator, Pseudonyms};

const TEXTS: &[&str] = &[
    "Hi, my name is Maria Gonzalez and I am writing about my order. You can reach me at maria.gonzalez@example.com or call +1 415 555 0132 any weekday after five. My card ending in 4242 was charged twice, the full number was 4111 1111 1111 1111, and I would like a refund to the same card. I live at 1600 Pennsylvania Ave NW, Washington, DC 20500. Thanks for your help with this, it has been a frustrating week.",
    "Could you help me write a short summary of the quarterly report? Revenue grew by twelve percent, mostly from the new subscription tier, while costs stayed flat because we delayed two hires. The board wants a one-page note for Monday that explains the numbers in plain words, lists the three main risks for next quarter, and ends with a clear recommendation on whether to expand the sales team now or wait.",
    "Server logs show repeated failures from 192.168.10.44 and from 2001:db8:85a3::8a2e:370:7334 between midnight and two. The requests carried the header Authorization: Bearer sk-proj-Xy7Qw2Lk9Pz4Rt6Vb1Nm3Jh5Gf8Dd0Ss, which should never appear in logs. The device MAC was 00:1A:2B:3C:4D:5E. Please rotate the key, block the address range, and open a ticket for the security team before the morning standup.",
    "What are some good day trips from Lisbon by train? We have three free days in early May, we like old towns, beaches and good food, and we would rather avoid renting a car. Sintra is already on the list. Ideally each trip takes less than ninety minutes each way, and we would love tips on which places get crowded, which need tickets booked in advance, and where to eat something local and not too expensive.",
    "Dear Dr. Okafor, I am following up on my appointment last Tuesday. My date of birth is 14 March 1987 and my patient number is 55-0192. Please send the lab results to j.okafor.patient@mailbox.org rather than my work address. My bank details for the reimbursement are DE89 3704 0044 0532 0130 00, and my social security number, if the insurer still needs it, is 219-09-9999. Kind regards, Thomas Berger.",
    "Explain the difference between a process and a thread in operating systems, with an example in Rust. I understand that threads share memory and processes do not, but I am confused about what happens to file descriptors, how signals are delivered, and why spawning a process is so much slower on some systems. A small code sample that starts two threads and one child process would help a lot, with comments on each step.",
];

fn main() {
    let a = Anonymizer::new("bench-salt");
    for t in TEXTS {
        assert!((400..=600).contains(&t.len()), "{} chars", t.len());
    }
    // Warm up (gazetteers and regexes are built lazily).
    for t in TEXTS {
        std::hint::black_box(a.analyze(t));
    }
    let iters = 20_000;
    let start = Instant::now();
    let mut spans = 0;
    for i in 0..iters {
        spans += a.analyze(TEXTS[i % TEXTS.len()]).len();
    }
    let analyze = iters as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..iters {
        let mut p = Pseudonyms::default();
        std::hint::black_box(a.anonymize(TEXTS[i % TEXTS.len()], &Operator::Replace, &mut p));
    }
    let anonymize = iters as f64 / start.elapsed().as_secs_f64();
    println!(
        "texts: {} of {}-{} characters (about 100 tokens)",
        TEXTS.len(),
        TEXTS.iter().map(|t| t.len()).min().unwrap_or(0),
        TEXTS.iter().map(|t| t.len()).max().unwrap_or(0)
    );
    println!(
        "spans found per pass over the set: {}",
        spans * TEXTS.len() / iters
    );
    println!("| operation | texts/s (one thread) |");
    println!("|---|---|");
    println!("| analyze | {analyze:.0} |");
    println!("| anonymize (replace) | {anonymize:.0} |");
}
