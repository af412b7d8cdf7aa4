//! LoRA adapters on a tiny model: gradients reach every adapter tensor, adapters save
//! and load, merge, and apply per sequence on one shared base.

use candle_core::Tensor;
use tether::learner::{SftExample, SftTrainer};
use tether::model::{LoraAdapter, LoraConfig, Mode, Outputs, SeqInput, Target};

use crate::common::{max_abs_diff, tiny_model, Tiny};

fn example() -> SftExample {
    SftExample {
        prompt: vec![1, 10, 11, 12, 13],
        answer: vec![40, 41, 42, 2],
        weight: 1.0,
    }
}

fn nonzero(t: &Tensor) -> bool {
    t.abs()
        .and_then(|a| a.sum_all())
        .and_then(|s| s.to_scalar::<f32>())
        .map(|s| s > 0.0)
        .unwrap_or(false)
}

#[test]
fn every_lora_tensor_receives_a_nonzero_gradient() {
    for t in [
        Tiny::default(),
        Tiny {
            qwen2: true,
            tied: false,
            ..Tiny::default()
        },
    ] {
        let (_dir, m) = tiny_model(t, 1);
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: Target::ALL.to_vec(),
            layers: 0,
        };
        let mut trainer = SftTrainer::new(&m.llama, &cfg, 42, 1e-2).expect("trainer");
        let n_vars = trainer.adapter().vars().len();
        assert_eq!(n_vars, t.layers * 7 * 2);
        // B starts at zero, so at step 0 only the B matrices can have a gradient.
        let g0 = trainer.gradients(&m.llama, &[example()]).expect("grads");
        for (i, g) in g0.iter().enumerate() {
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("var {i} got no gradient at all"));
            if i % 2 == 1 {
                assert!(nonzero(g), "B var {i} has a zero gradient at step 0");
            }
        }
        trainer.step(&m.llama, &[example()]).expect("step");
        let g1 = trainer.gradients(&m.llama, &[example()]).expect("grads");
        let names: Vec<String> = trainer
            .adapter()
            .named_tensors()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for (i, g) in g1.iter().enumerate() {
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("{} got no gradient", names[i]));
            assert!(nonzero(g), "{} has a zero gradient", names[i]);
        }
    }
}

#[test]
fn training_lowers_the_loss_and_never_touches_base_weights() {
    let (_dir, m) = tiny_model(Tiny::default(), 2);
    let before: Vec<(String, Vec<f32>)> = m
        .llama
        .base_tensors()
        .expect("base")
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().and_then(|t| t.to_vec1()).expect("vec")))
        .collect();
    let mut trainer = SftTrainer::new(&m.llama, &LoraConfig::default(), 9, 1e-2).expect("trainer");
    let first = trainer.step(&m.llama, &[example()]).expect("step");
    let mut last = first;
    for _ in 0..15 {
        last = trainer.step(&m.llama, &[example()]).expect("step");
    }
    assert!(last < first * 0.5, "loss went from {first} to {last}");
    let after = m.llama.base_tensors().expect("base");
    for ((name, b), (_, a)) in before.iter().zip(after) {
        let a: Vec<f32> = a.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        assert!(
            b.iter().zip(&a).all(|(x, y)| x.to_bits() == y.to_bits()),
            "base tensor {name} changed"
        );
    }
}

#[test]
fn adapters_save_load_merge_and_share_one_base_per_sequence() {
    let (dir, m) = tiny_model(Tiny::default(), 4);
    let model = &m.llama;
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        layers: 0,
    };
    let mut ta = SftTrainer::new(model, &cfg, 1, 5e-2).expect("a");
    let mut tb = SftTrainer::new(model, &LoraConfig::default(), 2, 5e-2).expect("b");
    for _ in 0..3 {
        ta.step(model, &[example()]).expect("step a");
        tb.step(model, &[example()]).expect("step b");
    }
    let path = dir.path().join("a.safetensors");
    ta.adapter().save(&path).expect("save");
    // The same adapter always serializes to the same bytes (versions are
    // content-hashed and reproductions compare hashes).
    let first = std::fs::read(&path).expect("read");
    for i in 0..8 {
        let again = dir.path().join(format!("again-{i}.safetensors"));
        ta.adapter().save(&again).expect("save again");
        assert_eq!(
            std::fs::read(&again).expect("read"),
            first,
            "save {i} differs"
        );
    }
    let loaded = LoraAdapter::load(&path, model.config(), model.device()).expect("load");
    assert_eq!(loaded.config(), &cfg);
    let a = ta.adapter().freeze().expect("freeze");
    let b = tb.adapter().freeze().expect("freeze");

    let tokens: Vec<u32> = vec![1, 10, 11, 12, 13, 40];
    let logits = |adapter: Option<&LoraAdapter>| {
        model
            .forward(
                &mut [SeqInput {
                    tokens: &tokens,
                    cache: None,
                    adapter,
                    tap: None,
                }],
                Outputs::AllTokens,
                Mode::Serve,
            )
            .expect("forward")
    };
    let base = logits(None);
    let with_a = logits(Some(&a));
    let with_b = logits(Some(&b));
    assert!(
        max_abs_diff(&base, &with_a) > 1e-3,
        "adapter a changes nothing"
    );
    assert!(
        max_abs_diff(&logits(Some(&loaded)), &with_a) < 1e-6,
        "save/load changed the adapter"
    );

    // Merged weights compute what base + adapter computes.
    let merged = model.merge(&a).expect("merge");
    let merged_logits = merged
        .forward(
            &mut [SeqInput {
                tokens: &tokens,
                cache: None,
                adapter: None,
                tap: None,
            }],
            Outputs::AllTokens,
            Mode::Serve,
        )
        .expect("merged forward");
    let d = max_abs_diff(&merged_logits, &with_a);
    assert!(d < 1e-4, "merged vs on-the-fly differ by {d}");

    // One batch, three versions: a, none, b, a — each row as if run alone.
    let mut seqs = vec![
        SeqInput {
            tokens: &tokens,
            cache: None,
            adapter: Some(&a),
            tap: None,
        },
        SeqInput {
            tokens: &tokens,
            cache: None,
            adapter: None,
            tap: None,
        },
        SeqInput {
            tokens: &tokens,
            cache: None,
            adapter: Some(&b),
            tap: None,
        },
        SeqInput {
            tokens: &tokens,
            cache: None,
            adapter: Some(&a),
            tap: None,
        },
    ];
    let mixed = model
        .forward(&mut seqs, Outputs::AllTokens, Mode::Serve)
        .expect("mixed");
    let n = tokens.len();
    for (i, want) in [&with_a, &base, &with_b, &with_a].into_iter().enumerate() {
        let got = mixed.narrow(0, i * n, n).expect("narrow");
        let d = max_abs_diff(&got, want);
        assert!(d < 1e-4, "sequence {i} in a mixed batch differs by {d}");
    }
}

#[test]
fn loading_an_adapter_into_the_wrong_model_says_why() {
    let (dir, m) = tiny_model(Tiny::default(), 4);
    let trainer = SftTrainer::new(&m.llama, &LoraConfig::default(), 1, 1e-3).expect("trainer");
    let path = dir.path().join("a.safetensors");
    trainer.adapter().save(&path).expect("save");
    let (_d2, other) = tiny_model(
        Tiny {
            hidden: 32,
            ..Tiny::default()
        },
        4,
    );
    let err = LoraAdapter::load(&path, other.llama.config(), other.llama.device())
        .expect_err("shape mismatch")
        .to_string();
    assert!(err.contains("shape"), "{err}");
    std::fs::write(&path, b"not safetensors").expect("write");
    let err = LoraAdapter::load(&path, m.llama.config(), m.llama.device())
        .expect_err("garbage")
        .to_string();
    assert!(err.contains("not safetensors"), "{err}");
}

#[test]
fn closeness_resumed_from_the_first_adapted_layer_equals_the_full_computation() {
    use tether::learner::{eval, objective, Pair};
    let (_dir, m) = tiny_model(
        Tiny {
            layers: 3,
            ..Tiny::default()
        },
        9,
    );
    let model = &m.llama;
    let cfg = LoraConfig {
        layers: 1,
        ..LoraConfig::default()
    };
    let mut t = SftTrainer::new(model, &cfg, 3, 5e-2).expect("trainer");
    for _ in 0..3 {
        t.step(model, &[example()]).expect("step");
    }
    let adapter = t.adapter().freeze().expect("freeze");
    let layer = adapter.first_layer();
    assert_eq!(layer, 2);
    let probes: Vec<Pair> = (0..20u32)
        .map(|i| Pair {
            prompt: vec![1, 10 + i % 7, 11, 30 + i],
            answer: vec![40 + i % 5, 41, 2],
        })
        .collect();
    let refs: Vec<&Pair> = probes.iter().collect();
    let hidden = objective::hidden_before(model, &refs, layer).expect("hidden");
    let full = eval::drift(model, &adapter, &probes).expect("drift");
    let resumed =
        eval::drift_from(model, &adapter, &probes, Some((layer, &hidden))).expect("resumed");
    assert!(full.kl > 0.0, "the adapter changes nothing: {full:?}");
    assert!(
        (full.kl - resumed.kl).abs() < 1e-5,
        "{full:?} vs {resumed:?}"
    );
    assert_eq!(full.top1, resumed.top1);
    assert_eq!(full.tokens, resumed.tokens);
}
