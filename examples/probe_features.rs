//! Hidden states of the default model for labelled texts: the features of the
//! hidden-state safety probe measured in `docs/benchmarks.md` ("A probe on the serving
//! model's hidden states"). For each `{"text"}` line of IN (its first 256 tokens), and
//! each layer L in LAYERS, writes the mean over tokens and the last token's state
//! entering layer L (2 × 576 little-endian f32 for SmolLM2-135M) to OUT.
//!
//! ```sh
//! cargo run --release --example probe_features -- IN.jsonl OUT.bin 16
//! python3 safety/probe_fit.py DIR   # fits and scores a logistic probe (numpy, scikit-learn)
//! ```

use std::io::{BufRead, Write};

use anyhow::Context;
use tether::model::{LoadOptions, LoadedModel, Mode, ModelSpec, Outputs, SeqInput};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, layers] = args.as_slice() else {
        anyhow::bail!("usage: probe_features IN.jsonl OUT.bin LAYER[,LAYER...]");
    };
    let layers: Vec<usize> = layers
        .split(',')
        .map(|s| s.parse().with_context(|| format!("layer {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    let m = LoadedModel::load(&ModelSpec::Default, &LoadOptions::default())?;
    let lines = std::io::BufReader::new(std::fs::File::open(input)?).lines();
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let started = std::time::Instant::now();
    let mut n = 0;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let mut ids = m.tokenizer.encode(v["text"].as_str().unwrap_or(""))?;
        ids.truncate(256);
        if ids.is_empty() {
            ids.push(0);
        }
        for &layer in &layers {
            let mut seqs = [SeqInput {
                tokens: &ids,
                cache: None,
                adapter: None,
                tap: None,
            }];
            let h = m
                .llama
                .forward(&mut seqs, Outputs::HiddenBefore(layer), Mode::Serve)?
                .to_dtype(candle_core::DType::F32)?;
            let mean: Vec<f32> = h.mean(0)?.to_vec1()?;
            let last: Vec<f32> = h.get(ids.len() - 1)?.to_vec1()?;
            for x in mean.iter().chain(&last) {
                out.write_all(&x.to_le_bytes())?;
            }
        }
        n += 1;
    }
    eprintln!("{n} texts in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
