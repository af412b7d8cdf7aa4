//! Loading errors are clear: missing files, unknown architectures, shape mismatches,
//! bad specs.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tether::model::{ComputePath, LoadOptions, LoadedModel, ModelSpec};

use crate::common::{write_tiny_hf, Tiny};

fn opts(home: &std::path::Path) -> LoadOptions {
    LoadOptions {
        compute: ComputePath::F32,
        device: Device::Cpu,
        home: home.to_path_buf(),
    }
}

fn load_err(dir: &std::path::Path) -> String {
    match LoadedModel::load(&ModelSpec::HfDir(dir.to_path_buf()), &opts(dir)) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_hf(dir.path(), Tiny::default(), 1);
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json not found") && e.contains("save_pretrained"),
        "{e}"
    );

    std::fs::remove_file(dir.path().join("config.json")).expect("rm");
    assert!(load_err(dir.path()).contains("config.json not found"));

    let e = "no/such/model.gguf"
        .parse::<ModelSpec>()
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("no/such/model.gguf") && e.contains("hf:ORG/NAME"),
        "{e}"
    );
    let e = "hf:just-a-name"
        .parse::<ModelSpec>()
        .expect_err("bad hub spec")
        .to_string();
    assert!(e.contains("hf:ORG/NAME"), "{e}");
    assert_eq!(
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct@main"
            .parse::<ModelSpec>()
            .expect("hub spec"),
        ModelSpec::Hub {
            repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            revision: Some("main".into())
        }
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_hf(dir.path(), Tiny::default(), 1);
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).expect("read");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM"),
    )
    .expect("write");
    let e = load_err(dir.path());
    assert!(
        e.contains("GPTNeoXForCausalLM") && e.contains("Llama-family"),
        "{e}"
    );

    // The same for a GGUF file.
    let gguf = dir.path().join("neox.gguf");
    let mut f = std::fs::File::create(&gguf).expect("create");
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).expect("z"),
        GgmlDType::F32,
    )
    .expect("q");
    gguf_file::write(
        &mut f,
        &[("general.architecture", &Value::String("gptneox".into()))],
        &[("token_embd.weight", &t)],
    )
    .expect("write gguf");
    drop(f);
    let e = match LoadedModel::load(&ModelSpec::Gguf(gguf), &opts(dir.path())) {
        Ok(_) => panic!("gptneox should not load"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("gptneox"), "{e}");
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_hf(dir.path(), Tiny::default(), 1);
    // Claim a wider FFN than the weights have.
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).expect("read");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"intermediate_size\":96", "\"intermediate_size\":128"),
    )
    .expect("write");
    let e = load_err(dir.path());
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
    assert!(e.contains("[96, 64]") && e.contains("[128, 64]"), "{e}");
}

#[test]
fn a_file_that_is_not_gguf_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("junk.gguf");
    std::fs::write(&p, b"definitely not a model").expect("write");
    let e = match LoadedModel::load(&ModelSpec::Gguf(p), &opts(dir.path())) {
        Ok(_) => panic!("junk should not load"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not a readable GGUF file"), "{e}");
}
