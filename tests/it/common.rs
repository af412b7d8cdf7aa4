//! Shared fixtures: tiny random models written as real checkpoint folders, and the
//! real SmolLM2 loaded once per test binary.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tether::model::{fetch, ComputePath, LoadOptions, LoadedModel, ModelSpec};

/// Shape of a tiny test model.
#[derive(Clone, Copy)]
pub struct Tiny {
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub qwen2: bool,
    pub tied: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            vocab: 96,
            hidden: 64,
            inter: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            qwen2: false,
            tied: true,
        }
    }
}

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// Writes a Hugging Face-style folder (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json) holding a random model of shape `t`.
pub fn write_tiny_hf(dir: &Path, t: Tiny, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hd = t.hidden / t.heads;
    let arch = if t.qwen2 {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let config = json!({
        "architectures": [arch],
        "vocab_size": t.vocab,
        "hidden_size": t.hidden,
        "intermediate_size": t.inter,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": t.tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let s = 0.2;
    w.insert(
        "model.embed_tokens.weight".into(),
        rand_tensor(&mut rng, &[t.vocab, t.hidden], 1.0),
    );
    for i in 0..t.layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let q = t.heads * hd;
        let kv = t.kv_heads * hd;
        w.insert(
            p("self_attn.q_proj.weight"),
            rand_tensor(&mut rng, &[q, t.hidden], s),
        );
        w.insert(
            p("self_attn.k_proj.weight"),
            rand_tensor(&mut rng, &[kv, t.hidden], s),
        );
        w.insert(
            p("self_attn.v_proj.weight"),
            rand_tensor(&mut rng, &[kv, t.hidden], s),
        );
        if t.qwen2 {
            w.insert(p("self_attn.q_proj.bias"), rand_tensor(&mut rng, &[q], s));
            w.insert(p("self_attn.k_proj.bias"), rand_tensor(&mut rng, &[kv], s));
            w.insert(p("self_attn.v_proj.bias"), rand_tensor(&mut rng, &[kv], s));
        }
        w.insert(
            p("self_attn.o_proj.weight"),
            rand_tensor(&mut rng, &[t.hidden, q], s),
        );
        w.insert(
            p("mlp.gate_proj.weight"),
            rand_tensor(&mut rng, &[t.inter, t.hidden], s),
        );
        w.insert(
            p("mlp.up_proj.weight"),
            rand_tensor(&mut rng, &[t.inter, t.hidden], s),
        );
        w.insert(
            p("mlp.down_proj.weight"),
            rand_tensor(&mut rng, &[t.hidden, t.inter], s),
        );
        let ones = (rand_tensor(&mut rng, &[t.hidden], 0.1) + 1.0).expect("norm");
        w.insert(p("input_layernorm.weight"), ones.clone());
        w.insert(p("post_attention_layernorm.weight"), ones);
    }
    w.insert(
        "model.norm.weight".into(),
        Tensor::ones(t.hidden, candle_core::DType::F32, &Device::Cpu).expect("ones"),
    );
    if !t.tied {
        w.insert(
            "lm_head.weight".into(),
            rand_tensor(&mut rng, &[t.vocab, t.hidden], s),
        );
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).expect("save weights");
    write_tiny_tokenizer(dir, t.vocab);
}

/// A word-level tokenizer over `w0 … wN` plus ChatML special tokens.
pub fn write_tiny_tokenizer(dir: &Path, vocab: usize) {
    let mut v = serde_json::Map::new();
    v.insert("<unk>".into(), json!(0));
    v.insert("<|im_start|>".into(), json!(1));
    v.insert("<|im_end|>".into(), json!(2));
    for i in 3..vocab {
        v.insert(format!("w{i}"), json!(i));
    }
    let tok = json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("tokenizer");
    let cfg = json!({"eos_token": "<|im_end|>", "bos_token": null,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).expect("tokenizer config");
}

/// Writes and loads a tiny model.
pub fn tiny_model(t: Tiny, seed: u64) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_hf(dir.path(), t, seed);
    let opts = LoadOptions {
        compute: ComputePath::F32,
        device: Device::Cpu,
        home: dir.path().join("home"),
    };
    let m =
        LoadedModel::load(&ModelSpec::HfDir(dir.path().to_path_buf()), &opts).expect("load tiny");
    (dir, m)
}

fn load_default(compute: ComputePath) -> LoadedModel {
    let opts = LoadOptions {
        compute,
        device: Device::Cpu,
        home: fetch::tether_home(),
    };
    LoadedModel::load(&ModelSpec::Default, &opts).expect("load default model")
}

/// The real default model (SmolLM2-135M-Instruct) on the default compute path (qf32),
/// loaded once.
pub fn smollm() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| load_default(ComputePath::default()))
}

/// The real default model with every weight dequantized to f32 at load, loaded once.
pub fn smollm_f32() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| load_default(ComputePath::F32))
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flatten")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}
