//! The forward pass on tiny random models: batching, caching and the train/serve ops
//! must all compute the same function.

use candle_core::Tensor;
use tether::model::{KvCache, Llama, Mode, Outputs, SeqInput};

use crate::common::{max_abs_diff, tiny_model, Tiny};

const TOL: f32 = 1e-4;

fn run(model: &Llama, tokens: &[u32], cache: Option<&mut KvCache>, outputs: Outputs) -> Tensor {
    model
        .forward(
            &mut [SeqInput {
                tokens,
                cache,
                adapter: None,
                tap: None,
            }],
            outputs,
            Mode::Serve,
        )
        .expect("forward")
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 17, 3, 44, 8, 61],
        vec![12, 7],
        vec![30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
        vec![90],
    ]
}

fn check_batched_equals_separate(t: Tiny) {
    let (_dir, m) = tiny_model(t, 7);
    let model = &m.llama;
    let prompts = prompts();

    // Prefill: 4 sequences of different lengths in one packed batch.
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut seqs: Vec<SeqInput<'_>> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| SeqInput {
            tokens: p,
            cache: Some(c),
            adapter: None,
            tap: None,
        })
        .collect();
    let batched = model
        .forward(&mut seqs, Outputs::LastToken, Mode::Serve)
        .expect("batched");
    assert_eq!(batched.dims(), &[4, t.vocab]);

    let mut solo_caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    for (i, p) in prompts.iter().enumerate() {
        let solo = run(model, p, Some(&mut solo_caches[i]), Outputs::LastToken);
        let diff = max_abs_diff(&batched.get(i).expect("row"), &solo.get(0).expect("row"));
        assert!(
            diff < TOL,
            "prefill seq {i}: batched vs separate differ by {diff}"
        );
    }

    // Decode: one new token each, caches of different lengths, plus one sequence that
    // still prefills two tokens (continuous batching mixes the two).
    let next: Vec<Vec<u32>> = vec![vec![11], vec![22, 23], vec![33], vec![44]];
    let mut seqs: Vec<SeqInput<'_>> = next
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| SeqInput {
            tokens: p,
            cache: Some(c),
            adapter: None,
            tap: None,
        })
        .collect();
    let batched = model
        .forward(&mut seqs, Outputs::LastToken, Mode::Serve)
        .expect("decode");
    for (i, p) in next.iter().enumerate() {
        let solo = run(model, p, Some(&mut solo_caches[i]), Outputs::LastToken);
        let diff = max_abs_diff(&batched.get(i).expect("row"), &solo.get(0).expect("row"));
        assert!(
            diff < TOL,
            "decode seq {i}: batched vs separate differ by {diff}"
        );
        assert_eq!(caches[i].len(), prompts[i].len() + p.len());
    }

    // All-token logits of a packed batch equal each sequence's own.
    let mut seqs: Vec<SeqInput<'_>> = prompts
        .iter()
        .map(|p| SeqInput {
            tokens: p,
            cache: None,
            adapter: None,
            tap: None,
        })
        .collect();
    let all = model
        .forward(&mut seqs, Outputs::AllTokens, Mode::Serve)
        .expect("all tokens");
    let mut row = 0;
    for p in &prompts {
        let solo = run(model, p, None, Outputs::AllTokens);
        let part = all.narrow(0, row, p.len()).expect("narrow");
        assert!(max_abs_diff(&part, &solo) < TOL);
        row += p.len();
    }
}

#[test]
fn batched_forward_of_four_sequences_equals_four_separate_forwards() {
    check_batched_equals_separate(Tiny::default());
}

#[test]
fn batched_forward_with_qwen2_biases_and_untied_head() {
    check_batched_equals_separate(Tiny {
        qwen2: true,
        tied: false,
        ..Tiny::default()
    });
}

#[test]
fn cached_token_by_token_decode_equals_one_full_forward() {
    let (_dir, m) = tiny_model(Tiny::default(), 3);
    let model = &m.llama;
    // Long enough to make the cache grow past one block.
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 7 + 3) % 96).collect();
    let tokens = &tokens[..200];
    let full = run(model, tokens, None, Outputs::AllTokens);
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    // A first chunk, then token by token (chunked prefill followed by decode).
    rows.push(run(
        model,
        &tokens[..130],
        Some(&mut cache),
        Outputs::AllTokens,
    ));
    for &t in &tokens[130..] {
        rows.push(run(model, &[t], Some(&mut cache), Outputs::AllTokens));
    }
    let inc = Tensor::cat(&rows, 0).expect("cat");
    let diff = max_abs_diff(&full, &inc);
    assert!(diff < TOL, "incremental vs full differ by {diff}");
    assert_eq!(cache.len(), 200);
}

#[test]
fn training_ops_compute_the_same_logits_as_serving_kernels() {
    for t in [
        Tiny::default(),
        Tiny {
            qwen2: true,
            ..Tiny::default()
        },
    ] {
        let (_dir, m) = tiny_model(t, 11);
        let tokens: Vec<u32> = vec![4, 8, 15, 16, 23, 42, 7, 1];
        let serve = run(&m.llama, &tokens, None, Outputs::AllTokens);
        let train = m
            .llama
            .forward(
                &mut [SeqInput {
                    tokens: &tokens,
                    cache: None,
                    adapter: None,
                    tap: None,
                }],
                Outputs::AllTokens,
                Mode::Train { dropout: None },
            )
            .expect("train forward");
        let diff = max_abs_diff(&serve, &train);
        assert!(diff < TOL, "serve vs train ops differ by {diff}");
    }
}

#[test]
fn bad_batches_are_errors_and_leave_caches_untouched() {
    let (_dir, m) = tiny_model(Tiny::default(), 5);
    let model = &m.llama;
    let mut cache = model.new_cache();
    run(model, &[1, 2, 3], Some(&mut cache), Outputs::LastToken);
    // An out-of-vocabulary id in the second sequence fails the whole batch.
    let mut other = model.new_cache();
    let err = model
        .forward(
            &mut [
                SeqInput {
                    tokens: &[4],
                    cache: Some(&mut cache),
                    adapter: None,
                    tap: None,
                },
                SeqInput {
                    tokens: &[5, 9999],
                    cache: Some(&mut other),
                    adapter: None,
                    tap: None,
                },
            ],
            Outputs::LastToken,
            Mode::Serve,
        )
        .expect_err("out of vocabulary");
    assert!(err.to_string().contains("9999"), "{err}");
    assert_eq!(cache.len(), 3);
    assert_eq!(other.len(), 0);
    // Empty sequences and context overflow are errors too.
    assert!(model
        .forward(
            &mut [SeqInput {
                tokens: &[],
                cache: None,
                adapter: None,
                tap: None,
            }],
            Outputs::LastToken,
            Mode::Serve
        )
        .is_err());
    let long: Vec<u32> = vec![3; 257];
    let err = model
        .forward(
            &mut [SeqInput {
                tokens: &long,
                cache: None,
                adapter: None,
                tap: None,
            }],
            Outputs::LastToken,
            Mode::Serve,
        )
        .expect_err("overflow");
    assert!(err.to_string().contains("context length of 256"), "{err}");
}

#[test]
fn an_f16_kv_cache_halves_memory_and_stays_close_to_f32() {
    let (_dir, m) = tiny_model(Tiny::default(), 13);
    let model = &m.llama;
    let tokens: Vec<u32> = (0..150u32).map(|i| (i * 11 + 5) % 96).collect();
    let mut exact = model.new_cache();
    let mut half = KvCache::with_dtype(model.config().num_layers, candle_core::DType::F16);
    let a = run(model, &tokens[..100], Some(&mut exact), Outputs::LastToken);
    let b = run(model, &tokens[..100], Some(&mut half), Outputs::LastToken);
    assert!(max_abs_diff(&a, &b) < 1e-2);
    for &t in &tokens[100..] {
        let a = run(model, &[t], Some(&mut exact), Outputs::LastToken);
        let b = run(model, &[t], Some(&mut half), Outputs::LastToken);
        let d = max_abs_diff(&a, &b);
        assert!(d < 2e-2, "f16 cache drifted by {d}");
    }
    assert_eq!(half.len(), exact.len());
    assert_eq!(half.size_in_bytes() * 2, exact.size_in_bytes());
}

#[test]
fn a_reserving_cache_allocates_once_and_still_grows_past_its_reservation() {
    let (_dir, m) = tiny_model(Tiny::default(), 17);
    let model = &m.llama;
    let layers = model.config().num_layers;
    let tokens: Vec<u32> = (0..60u32).map(|i| (i * 7 + 3) % 96).collect();
    let mut plain = model.new_cache();
    let mut reserved = KvCache::with_dtype(layers, candle_core::DType::F32).reserving(40);
    let a = run(model, &tokens[..10], Some(&mut plain), Outputs::LastToken);
    let b = run(
        model,
        &tokens[..10],
        Some(&mut reserved),
        Outputs::LastToken,
    );
    assert!(max_abs_diff(&a, &b) < 1e-6);
    // Room for 40 tokens from the first step on; the plain cache starts at one block.
    let size = reserved.size_in_bytes();
    assert_eq!(size * KvCache::BLOCK, plain.size_in_bytes() * 40);
    for &t in &tokens[10..40] {
        run(model, &[t], Some(&mut reserved), Outputs::LastToken);
        assert_eq!(
            reserved.size_in_bytes(),
            size,
            "reallocated within the reservation"
        );
    }
    for &t in &tokens[10..60] {
        run(model, &[t], Some(&mut plain), Outputs::LastToken);
    }
    // Past it, the cache grows and still computes the same thing.
    for &t in &tokens[40..60] {
        run(model, &[t], Some(&mut reserved), Outputs::LastToken);
    }
    assert!(reserved.size_in_bytes() > size);
    assert_eq!(reserved.len(), 60);
    let again = run(model, &[5], Some(&mut reserved), Outputs::LastToken);
    let expected = run(model, &[5], Some(&mut plain), Outputs::LastToken);
    assert!(max_abs_diff(&again, &expected) < 1e-6);
}

/// A cache started from another cache's first tokens (prefix caching) continues as if
/// it had computed them itself, in f32 and f16 storage; a bad request is refused.
#[test]
fn a_cache_extended_from_a_shared_prefix_computes_the_same_logits() {
    let (_dir, m) = tiny_model(Tiny::default(), 23);
    let model = &m.llama;
    let layers = model.config().num_layers;
    let a: Vec<u32> = (0..30u32).map(|i| (i * 5 + 1) % 96).collect();
    // `b` shares a's first 20 tokens, then differs.
    let mut b = a[..20].to_vec();
    b.extend((0..9u32).map(|i| (i * 11 + 40) % 96));
    for dtype in [candle_core::DType::F32, candle_core::DType::F16] {
        let mut first = KvCache::with_dtype(layers, dtype);
        run(model, &a, Some(&mut first), Outputs::LastToken);
        let mut whole = KvCache::with_dtype(layers, dtype);
        let want = run(model, &b, Some(&mut whole), Outputs::LastToken);

        let mut reused = KvCache::with_dtype(layers, dtype).reserving(b.len());
        reused.extend_from(&first, 20).expect("extend");
        assert_eq!(reused.len(), 20);
        let got = run(model, &b[20..], Some(&mut reused), Outputs::LastToken);
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-5, "{dtype:?}: logits differ by {d}");
        // The first cache is untouched and still continues its own prompt.
        assert_eq!(first.len(), 30);

        let mut bad = KvCache::with_dtype(layers, dtype);
        assert!(
            bad.extend_from(&first, 31).is_err(),
            "more tokens than held"
        );
        let mut other = KvCache::with_dtype(layers + 1, dtype);
        assert!(
            other.extend_from(&first, 5).is_err(),
            "layer count mismatch"
        );
    }
}
