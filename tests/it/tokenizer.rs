//! Tokenization of the default model matches the reference tokenizer exactly, and the
//! chat template renders what the reference renders.

use serde::Deserialize;
use tether::model::{ChatMessage, DecodeStream};

use crate::common::smollm;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn golden() -> Vec<Case> {
    serde_json::from_str(include_str!("../data/tokenizer_golden.json")).expect("golden json")
}

#[test]
fn token_ids_match_the_reference_tokenizer_on_golden_strings() {
    let tok = &smollm().tokenizer;
    let cases = golden();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        let got = tok.encode(&c.text).expect("encode");
        if got != c.ids {
            failures.push(format!(
                "{:?}\n  want {:?}\n  got  {:?}",
                c.text, c.ids, got
            ));
        }
        // Decoding with special tokens kept round-trips exactly.
        assert_eq!(tok.decode(&c.ids, false).expect("decode"), c.text);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn chat_template_renders_and_tokenizes_like_llama_cpp() {
    let m = smollm();
    let msgs = [ChatMessage::new("user", "What is the capital of France?")];
    let text = m.template.render(&msgs, true).expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let want: Vec<u32> = "1 9690 198 2683 359 253 5356 5646 11173 3365 3511 308 34519 28 7018 411 407 19712 8182 2 198 1 4093 198 1780 314 260 3575 282 4649 47 2 198 1 520 9531 198"
        .split(' ')
        .map(|s| s.parse().expect("id"))
        .collect();
    assert_eq!(m.encode_chat(&msgs).expect("encode"), want);
}

#[test]
fn chat_template_handles_system_multi_turn_and_no_generation_prompt() {
    let m = smollm();
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(
        m.template.render(&msgs, false).expect("render"),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    );
    let with_prompt = m.template.render(&msgs, true).expect("render");
    assert!(with_prompt.ends_with("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn streaming_decode_never_splits_a_utf8_character() {
    let tok = &smollm().tokenizer;
    for text in [
        "😀👍🏽 café 你好，世界 🇫🇷",
        "naïve résumé 日本語のテキスト",
        "plain ascii",
    ] {
        let ids = tok.encode(text).expect("encode");
        let mut stream = DecodeStream::new();
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(tok, id).expect("step") {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "piece {piece:?} splits a character"
                );
                out.push_str(&piece);
            }
        }
        if let Some(rest) = stream.flush(tok).expect("flush") {
            out.push_str(&rest);
        }
        assert_eq!(out, text);
    }
}

#[test]
fn special_tokens_and_stop_ids_are_known() {
    let tok = &smollm().tokenizer;
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.eos(), Some(2));
    assert!(tok.stop_ids().contains(&2) && tok.stop_ids().contains(&0));
    assert_eq!(tok.vocab_size(), 49152);
}
