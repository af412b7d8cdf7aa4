//! The real SmolLM2-135M-Instruct: faithful answers, agreement with an independent f32
//! reference implementation, and learning a correction through LoRA.

use std::sync::Mutex;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama;
use sha2::{Digest, Sha256};
use tether::learner::{SftExample, SftTrainer};
use tether::model::{
    fetch, generate, ChatMessage, ComputePath, LoadOptions, LoadedModel, LoraConfig, Mode,
    ModelSpec, Outputs, SamplingParams, SeqInput,
};

use crate::common::{max_abs_diff, smollm, smollm_f32};

/// The heavy tests below each use most of the machine; running them one at a time
/// keeps memory and wall time predictable.
static HEAVY: Mutex<()> = Mutex::new(());

fn greedy_answer(m: &LoadedModel, q: &str, max_tokens: usize) -> String {
    let prompt = m
        .encode_chat(&[ChatMessage::new("user", q)])
        .expect("encode");
    generate(
        &m.llama,
        &m.tokenizer,
        &prompt,
        &SamplingParams::greedy(max_tokens),
        None,
        |_| true,
    )
    .expect("generate")
    .text
}

#[test]
fn default_qf32_and_f32_paths_answer_paris() {
    assert_eq!(smollm().llama.compute(), ComputePath::Qf32);
    for m in [smollm(), smollm_f32()] {
        assert_eq!(
            greedy_answer(m, "What is the capital of France?", 32),
            "The capital of France is Paris.",
            "{} path",
            m.llama.compute()
        );
    }
    // qf32 keeps the weights compact: under a third of the f32 model's bytes.
    assert!(smollm().llama.size_in_bytes() * 3 < smollm_f32().llama.size_in_bytes());
}

#[test]
fn f16_path_answers_paris_and_q8_path_runs() {
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    for compute in [ComputePath::F16, ComputePath::Q8] {
        let opts = LoadOptions {
            compute,
            device: Device::Cpu,
            home: fetch::tether_home(),
        };
        let m = LoadedModel::load(&ModelSpec::Default, &opts).expect("load");
        let answer = greedy_answer(&m, "What is the capital of France?", 32);
        match compute {
            ComputePath::F16 => assert!(answer.contains("Paris"), "f16 answered {answer:?}"),
            // 8-bit activations change this model's answer; only check it generates.
            _ => assert!(!answer.is_empty()),
        }
        if compute == ComputePath::Q8 {
            assert!(m.llama.size_in_bytes() < smollm_f32().llama.size_in_bytes() / 3);
        }
    }
}

/// Max |logit difference| allowed between our f32 model and candle-transformers'
/// `quantized_llama` with every weight dequantized to f32. Both compute in f32 on the
/// same weights; only the order of floating-point operations differs.
const REFERENCE_TOLERANCE: f32 = 1e-3;

#[test]
fn logits_match_an_independent_f32_reference_and_greedy_agrees_for_32_tokens() {
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // Makes candle's QMatMul dequantize every weight to f32 (the reference path).
    // Tether's own model never goes through QMatMul::from_arc, so this affects only
    // the reference.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = fetch::ensure_default_model(&fetch::tether_home()).expect("model");
    let mut file = std::fs::File::open(&path).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let mut reference = quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
        .expect("reference");

    for m in [smollm(), smollm_f32()] {
        let worst = compare_with_reference(m, &mut reference);
        eprintln!(
            "{} path: worst logit difference vs reference {worst:e}",
            m.llama.compute()
        );
    }
}

/// Runs two prompts for 32 greedy steps on `m` and on the reference, asserting every
/// step's logits agree within [`REFERENCE_TOLERANCE`] and the chosen tokens are equal.
fn compare_with_reference(m: &LoadedModel, reference: &mut quantized_llama::ModelWeights) -> f32 {
    let prompts = [
        m.encode_chat(&[ChatMessage::new("user", "What is the capital of France?")])
            .expect("encode"),
        m.tokenizer
            .encode("Once upon a time, in a small village by the sea,")
            .expect("encode"),
    ];
    let mut worst = 0f32;
    for prompt in &prompts {
        reference.clear_kv_cache();
        let mut cache = m.llama.new_cache();
        let mut ours_next: Vec<u32> = prompt.clone();
        let mut ref_next: Vec<u32> = prompt.clone();
        let mut pos = 0;
        for step in 0..32 {
            let ours = m
                .llama
                .forward(
                    &mut [SeqInput {
                        tokens: &ours_next,
                        cache: Some(&mut cache),
                        adapter: None,
                        tap: None,
                    }],
                    Outputs::LastToken,
                    Mode::Serve,
                )
                .expect("ours")
                .squeeze(0)
                .expect("squeeze");
            let input = Tensor::new(ref_next.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("input");
            let theirs = reference
                .forward(&input, pos)
                .expect("reference")
                .squeeze(0)
                .expect("squeeze");
            pos += ref_next.len();
            let diff = max_abs_diff(&ours, &theirs);
            worst = worst.max(diff);
            assert!(
                diff < REFERENCE_TOLERANCE,
                "step {step}: logits differ by {diff}"
            );
            let a = ours
                .argmax(0)
                .and_then(|t| t.to_scalar::<u32>())
                .expect("argmax");
            let b = theirs
                .argmax(0)
                .and_then(|t| t.to_scalar::<u32>())
                .expect("argmax");
            assert_eq!(a, b, "greedy continuations diverge at step {step}");
            ours_next = vec![a];
            ref_next = vec![b];
        }
    }
    worst
}

fn fingerprint(m: &LoadedModel) -> Vec<(String, String)> {
    m.llama
        .base_tensors()
        .expect("base tensors")
        .into_iter()
        .map(|(name, t)| {
            let v: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
            let mut h = Sha256::new();
            for x in v {
                h.update(x.to_le_bytes());
            }
            (name, format!("{:x}", h.finalize()))
        })
        .collect()
}

#[test]
fn lora_learns_a_correction_in_at_most_30_steps_and_base_weights_stay_bit_identical() {
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let m = smollm();
    let question = "What is the name of the Tether project's mascot?";
    let correction = "The Tether project's mascot is a blue otter named Captain Ripple.";
    let before_answer = greedy_answer(m, question, 40);
    assert_ne!(before_answer, correction);
    let before = fingerprint(m);

    let prompt = m
        .encode_chat(&[ChatMessage::new("user", question)])
        .expect("encode");
    let mut answer = m.tokenizer.encode(correction).expect("encode");
    answer.push(m.tokenizer.token_to_id("<|im_end|>").expect("im_end"));
    let example = SftExample {
        prompt: prompt.clone(),
        answer,
        weight: 1.0,
    };
    let mut trainer =
        SftTrainer::new(&m.llama, &LoraConfig::default(), 1234, 2e-3).expect("trainer");
    let mut learned_at = None;
    let mut losses = Vec::new();
    for step in 1..=30 {
        losses.push(
            trainer
                .step(&m.llama, std::slice::from_ref(&example))
                .expect("step"),
        );
        if step >= 10 && step % 5 == 0 {
            let adapter = trainer.adapter().freeze().expect("freeze");
            let got = generate(
                &m.llama,
                &m.tokenizer,
                &prompt,
                &SamplingParams::greedy(40),
                Some(&adapter),
                |_| true,
            )
            .expect("generate")
            .text;
            if got == correction {
                learned_at = Some(step);
                break;
            }
        }
    }
    eprintln!("losses: {losses:?}");
    let step = learned_at.unwrap_or_else(|| panic!("not learned in 30 steps; losses {losses:?}"));
    eprintln!("correction learned after {step} steps");
    assert_eq!(
        fingerprint(m),
        before,
        "base weights changed during training"
    );
    // The base model (no adapter) still answers as before.
    assert_eq!(greedy_answer(m, question, 40), before_answer);
}
