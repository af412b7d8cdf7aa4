//! Model specifications (`default`, a GGUF file, a Hugging Face folder, `hf:ORG/NAME`)
//! and loading them into a ready-to-run [`LoadedModel`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use serde::Serialize;
use serde_json::Value;

use super::config::LlamaConfig;
use super::error::{Error, Result};
use super::fetch;
use super::llama::Llama;
use super::template::{ChatMessage, ChatTemplate, CHATML};
use super::tokenizer::Tokenizer;
use super::weights::{ComputePath, WeightSource};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// SmolLM2-135M-Instruct Q4_1, fetched on first use.
    Default,
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder (`config.json`, `*.safetensors`, `tokenizer.json`).
    HfDir(PathBuf),
    /// A Hugging Face Hub repository, downloaded through hf-hub.
    Hub {
        /// `ORG/NAME`.
        repo: String,
        /// Branch, tag or commit (default `main`).
        revision: Option<String>,
    },
}

impl FromStr for ModelSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "default" {
            return Ok(ModelSpec::Default);
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, v)) => (r, Some(v.to_string())),
                None => (rest, None),
            };
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2
                || parts.iter().any(|p| p.is_empty())
                || revision.as_deref() == Some("")
            {
                return Err(Error::InvalidSpec {
                    spec: s.to_string(),
                    reason: "expected hf:ORG/NAME or hf:ORG/NAME@REVISION".into(),
                });
            }
            return Ok(ModelSpec::Hub {
                repo: repo.to_string(),
                revision,
            });
        }
        let path = PathBuf::from(s);
        if path.is_dir() {
            Ok(ModelSpec::HfDir(path))
        } else if path.is_file() {
            Ok(ModelSpec::Gguf(path))
        } else {
            Err(Error::MissingFile {
                what: "model",
                path,
                hint: "pass a .gguf file, a Hugging Face model folder, hf:ORG/NAME, or `default`"
                    .into(),
            })
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Default => f.write_str("default"),
            ModelSpec::Gguf(p) | ModelSpec::HfDir(p) => write!(f, "{}", p.display()),
            ModelSpec::Hub {
                repo,
                revision: None,
            } => write!(f, "hf:{repo}"),
            ModelSpec::Hub {
                repo,
                revision: Some(r),
            } => write!(f, "hf:{repo}@{r}"),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute path for linear layers.
    pub compute: ComputePath,
    /// Device for weights and activations.
    pub device: Device,
    /// Cache directory for the default model and Hub downloads.
    pub home: PathBuf,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            compute: ComputePath::default(),
            device: default_device(),
            home: fetch::tether_home(),
        }
    }
}

/// CUDA device 0 when built with `--features cuda` and a GPU is present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A model ready to chat: weights, tokenizer and chat template.
pub struct LoadedModel {
    /// Short lowercase name, e.g. `smollm2-135m-instruct`.
    pub name: String,
    /// What was loaded.
    pub spec: ModelSpec,
    /// The network.
    pub llama: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Storage types of the checkpoint's tensors, e.g. `{"Q4_1": 210, "F32": 61}`.
    pub tensor_types: BTreeMap<String, usize>,
}

/// What `tether model info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Short name.
    pub name: String,
    /// Spec it was loaded from.
    pub source: String,
    /// Architecture and shape.
    pub config: LlamaConfig,
    /// Parameters in the base model.
    pub parameters: usize,
    /// Checkpoint tensor storage types and counts.
    pub quantization: BTreeMap<String, usize>,
    /// Compute path in use.
    pub compute: String,
    /// Bytes of weights held in memory.
    pub weight_bytes: usize,
    /// Context length in tokens.
    pub context_length: usize,
    /// BOS token.
    pub bos_token: Option<String>,
    /// EOS token.
    pub eos_token: Option<String>,
    /// Tokens that stop generation.
    pub stop_tokens: Vec<String>,
    /// All special tokens with their ids.
    pub special_tokens: Vec<(u32, String)>,
    /// The chat template source.
    pub chat_template: String,
}

impl LoadedModel {
    /// Loads `spec` (fetching the default model or Hub files when needed).
    pub fn load(spec: &ModelSpec, opts: &LoadOptions) -> Result<Self> {
        match spec {
            ModelSpec::Default => {
                let path = fetch::ensure_default_model(&opts.home)?;
                let mut m = Self::load_gguf(&path, opts)?;
                m.name = fetch::DEFAULT_MODEL_NAME.to_string();
                m.spec = ModelSpec::Default;
                Ok(m)
            }
            ModelSpec::Gguf(path) => Self::load_gguf(path, opts),
            ModelSpec::HfDir(dir) => Self::load_hf_dir(dir, opts),
            ModelSpec::Hub { repo, revision } => {
                let dir = hub_download(repo, revision.as_deref(), &opts.home)?;
                let mut m = Self::load_hf_dir(&dir, opts)?;
                m.spec = spec.clone();
                Ok(m)
            }
        }
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let mut src = WeightSource::open_gguf(path)?;
        let content = src
            .gguf()
            .ok_or_else(|| Error::Config("not a GGUF source".into()))?;
        let cfg = LlamaConfig::from_gguf(content)?;
        let tokenizer = Tokenizer::from_gguf(content)?;
        let template_src = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let mut tensor_types = BTreeMap::new();
        for info in content.tensor_infos.values() {
            *tensor_types
                .entry(format!("{:?}", info.ggml_dtype))
                .or_insert(0) += 1;
        }
        let llama = Llama::load(&mut src, &cfg, opts.compute, &opts.device)?;
        let template = make_template(template_src.as_deref(), &tokenizer)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split('.').next().unwrap_or(n).to_ascii_lowercase())
            .unwrap_or_else(|| "model".into());
        Ok(Self {
            name,
            spec: ModelSpec::Gguf(path.to_path_buf()),
            llama,
            tokenizer,
            template,
            tensor_types,
        })
    }

    fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let need = |what: &'static str, hint: &str| -> Result<PathBuf> {
            let p = dir.join(what);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::MissingFile {
                    what,
                    path: p,
                    hint: hint.to_string(),
                })
            }
        };
        let cfg_path = need(
            "config.json",
            "a Hugging Face model folder needs its config.json",
        )?;
        let cfg_text =
            std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("read", &cfg_path, e))?;
        let cfg = LlamaConfig::from_hf_json(&cfg_text)?;
        let tok_path = need(
            "tokenizer.json",
            "export the tokenizer with `tokenizer.save_pretrained(dir)`",
        )?;
        let tok_cfg: Option<Value> =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(s) => Some(
                    serde_json::from_str(&s)
                        .map_err(|e| Error::Config(format!("tokenizer_config.json: {e}")))?,
                ),
                Err(_) => None,
            };
        let tokenizer = Tokenizer::from_files(&tok_path, tok_cfg.as_ref())?;
        let template_src = chat_template_from(dir, tok_cfg.as_ref());
        let weights = safetensors_files(dir)?;
        let mut tensor_types = BTreeMap::new();
        let mut src = WeightSource::open_safetensors(&weights)?;
        if let WeightSource::Safetensors(st) = &src {
            for (_, view) in st.tensors() {
                *tensor_types
                    .entry(format!("{:?}", view.dtype()))
                    .or_insert(0) += 1;
            }
        }
        let llama = Llama::load(&mut src, &cfg, opts.compute, &opts.device)?;
        let template = make_template(template_src.as_deref(), &tokenizer)?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_ascii_lowercase)
            })
            .unwrap_or_else(|| "model".into());
        Ok(Self {
            name,
            spec: ModelSpec::HfDir(dir.to_path_buf()),
            llama,
            tokenizer,
            template,
            tensor_types,
        })
    }

    /// Renders `messages` with the chat template (generation prompt appended) and
    /// tokenizes the result.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenizer.encode_prompt(&text)
    }

    /// Token ids of an assistant answer as the model should produce it: the text, then
    /// the end-of-turn token (`<|im_end|>` for ChatML models, else EOS).
    pub fn encode_answer(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        let end = self
            .tokenizer
            .token_to_id("<|im_end|>")
            .or(self.tokenizer.eos())
            .or(self.tokenizer.stop_ids().first().copied());
        ids.extend(end);
        Ok(ids)
    }

    /// A description of the loaded model.
    pub fn info(&self) -> ModelInfo {
        let tok = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        ModelInfo {
            name: self.name.clone(),
            source: self.spec.to_string(),
            config: self.llama.config().clone(),
            parameters: self.llama.parameter_count(),
            quantization: self.tensor_types.clone(),
            compute: self.llama.compute().to_string(),
            weight_bytes: self.llama.size_in_bytes(),
            context_length: self.llama.config().context_length,
            bos_token: tok(self.tokenizer.bos()),
            eos_token: tok(self.tokenizer.eos()),
            stop_tokens: self
                .tokenizer
                .stop_ids()
                .iter()
                .filter_map(|&i| self.tokenizer.id_to_token(i))
                .collect(),
            special_tokens: self.tokenizer.special_tokens(),
            chat_template: self.template.source().to_string(),
        }
    }
}

fn make_template(source: Option<&str>, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    let tok = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let source = source.unwrap_or_else(|| {
        tracing::warn!("the model has no chat template; using ChatML");
        CHATML
    });
    ChatTemplate::new(source, &tok(tokenizer.bos()), &tok(tokenizer.eos()))
}

/// The template from `tokenizer_config.json` (a string, or a list of named templates
/// of which `default` is used), else `chat_template.jinja`.
fn chat_template_from(dir: &Path, tok_cfg: Option<&Value>) -> Option<String> {
    if let Some(t) = tok_cfg.and_then(|c| c.get("chat_template")) {
        if let Some(s) = t.as_str() {
            return Some(s.to_string());
        }
        if let Some(list) = t.as_array() {
            let pick = list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first());
            if let Some(s) = pick.and_then(|e| e.get("template")).and_then(Value::as_str) {
                return Some(s.to_string());
            }
        }
    }
    std::fs::read_to_string(dir.join("chat_template.jinja")).ok()
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io("read", &index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", index.display())))?;
        let mut files: Vec<String> = v
            .get("weight_map")
            .and_then(Value::as_object)
            .map(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::MissingFile {
                        what: "weight shard",
                        path: p,
                        hint: format!("listed in {}", index.display()),
                    })
                }
            })
            .collect();
    }
    Err(Error::MissingFile {
        what: "model.safetensors",
        path: single,
        hint: "the folder has neither model.safetensors nor model.safetensors.index.json".into(),
    })
}

/// Downloads the files a model folder needs from the Hub; returns the snapshot folder.
fn hub_download(repo: &str, revision: Option<&str>, home: &Path) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let hub = |e: hf_hub::api::sync::ApiError| Error::Hub(format!("{repo}: {e}"));
    let api = ApiBuilder::new()
        .with_cache_dir(home.join("hf"))
        .with_progress(true)
        .build()
        .map_err(hub)?;
    let repo_api = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    ));
    let config = repo_api.get("config.json").map_err(hub)?;
    repo_api.get("tokenizer.json").map_err(hub)?;
    // Optional files: absent ones are simply not there.
    let _ = repo_api.get("tokenizer_config.json");
    let _ = repo_api.get("chat_template.jinja");
    match repo_api.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo_api.get("model.safetensors.index.json").map_err(hub)?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io("read", &index, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<&str> = v
                .get("weight_map")
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo_api.get(s).map_err(hub)?;
            }
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Hub(format!("{repo}: unexpected cache layout")))
}
