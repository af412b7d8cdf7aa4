//! The `tether` command line: argument definitions and what each command does.
//! `main.rs` parses, sets up logging and calls [`run`]; errors surface as `anyhow`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::model::{
    fetch, generate, ChatMessage, ComputePath, LoadOptions, LoadedModel, ModelSpec, SamplingParams,
};

/// Tether: a chat-model server that learns from feedback, tethered to a trusted baseline.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
pub struct Cli {
    /// Configuration file (TOML) overlaid on configs/default.toml.
    #[arg(long, global = true, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one prompt from the command line (no server needed).
    Chat(ChatArgs),
    /// Fetch or describe models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Operator commands against a running server.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Train, run and evaluate the safety classifiers offline.
    #[command(subcommand)]
    Safety(SafetyCommand),
    /// Find or remove personal data in JSONL ({"text": ...} per line) from stdin.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Work with the logged data.
    #[command(subcommand)]
    Data(DataCommand),
}

/// `tether privacy …`.
#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// One {"spans": [{"type","start","end","score"}]} per line (character offsets).
    Scan,
    /// Precision and recall per entity type on a labelled JSONL file
    /// ({"text", "spans": [{"type","start","end"}]}, character offsets).
    Eval {
        /// The labelled file.
        file: PathBuf,
    },
    /// One {"text": anonymized} per line.
    Redact {
        /// replace (<PERSON_1>), redact, mask or hash (default: privacy.operator).
        #[arg(long)]
        operator: Option<String>,
    },
}

/// `tether data …`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write logged conversations as JSONL for fine-tuning: anonymized, exact and
    /// near duplicates removed, anything the safety classifiers flag excluded.
    Export {
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Data directory (default: server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// `tether safety …`.
#[derive(Debug, Subcommand)]
pub enum SafetyCommand {
    /// Train the classifier from labelled JSONL files ({"text", "labels"} per line).
    Train {
        /// Folder of training files (default: SAFETY_DIR/data/train).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where to write the weights (default: SAFETY_DIR/classifier.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Passes over the data.
        #[arg(long, default_value_t = 12)]
        epochs: usize,
    },
    /// Classify JSONL from stdin ({"text": ...} per line); one JSON result per line.
    Classify {
        /// Check the texts as answers instead of prompts (with the answer probe, as
        /// the server does: loads the model, about 25 answers a second).
        #[arg(long)]
        output: bool,
        /// With --output: judge with the rules and n-grams alone (no model).
        #[arg(long, requires = "output")]
        no_probe: bool,
    },
    /// Precision, recall and ROC-AUC per category on a labelled JSONL file.
    Eval {
        /// Labelled file (default: SAFETY_DIR/data/heldout.jsonl).
        file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Judge the texts as answers (the output direction) instead of prompts.
        #[arg(long)]
        output: bool,
        /// With --output: judge with the rules and n-grams alone. By default answers
        /// are judged as the server judges them, with the answer probe reading the
        /// model's hidden states (loads the model; about 25 answers a second).
        #[arg(long, requires = "output")]
        no_probe: bool,
    },
    /// Train the answer probe: runs the model over the training texts as answers and
    /// fits a logistic regression on its hidden states (a few minutes on two cores).
    TrainProbe {
        /// Folder of training files (default: SAFETY_DIR/data/train).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The served model's own answers to harmless prompts, labelled safe
        /// (default: SAFETY_DIR/data/probe; `safety/data/probe/generate.py`).
        #[arg(long)]
        model_answers: Option<PathBuf>,
        /// Where to write it (default: SAFETY_DIR/probe.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Which layer's input states to read.
        #[arg(long, default_value_t = 16)]
        layer: usize,
    },
}

/// `tether serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: default, a .gguf file, a Hugging Face folder or hf:ORG/NAME[@rev].
    #[arg(long)]
    pub model: Option<String>,
    /// Address to bind.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind (0 picks a free one; the address is logged).
    #[arg(long)]
    pub port: Option<u16>,
    /// Database and version snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Compute path: qf32 (default), f32, f16 or q8.
    #[arg(long)]
    pub compute: Option<ComputePath>,
}

/// Where the server is and the operator token.
#[derive(Debug, Args)]
pub struct Remote {
    /// Server URL (default: http://HOST:PORT from the configuration).
    #[arg(long, env = "TETHER_URL")]
    pub url: Option<String>,
    /// Operator token (default: server.operator_token / TETHER_OPERATOR_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

/// `tether admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage user API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List versions: lineage, status, evaluation, serving log, canary and drift state.
    Versions {
        /// Server and operator token.
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a version serve every unpinned request.
    Promote {
        /// Version id (NAME@vN).
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Server and operator token.
        #[command(flatten)]
        remote: Remote,
    },
    /// Roll back to the last good version, or to --to.
    Rollback {
        /// Version id to roll back to (default: the last good version).
        #[arg(long)]
        to: Option<String>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Server and operator token.
        #[command(flatten)]
        remote: Remote,
    },
    /// Retire a version (a candidate, canary or earlier version).
    Retire {
        /// Version id (NAME@vN).
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Server and operator token.
        #[command(flatten)]
        remote: Remote,
    },
}

/// `tether admin keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a feedback source (prints the key once; only its hash is stored).
    Create {
        /// Source the key speaks for.
        #[arg(long)]
        source: String,
        /// Server URL (default: http://HOST:PORT from the configuration).
        #[arg(long, env = "TETHER_URL")]
        url: Option<String>,
        /// Operator token (default: server.operator_token / TETHER_OPERATOR_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
}

/// Calls an operator endpoint and prints the JSON answer.
fn admin_call(
    config: &Config,
    remote: Remote,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let url = remote
        .url
        .unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
    let token = remote
        .token
        .or(config.server.operator_token.clone())
        .context("no operator token: pass --token or set TETHER_OPERATOR_TOKEN")?;
    let req = ureq::request(method, &format!("{}{path}", url.trim_end_matches('/')))
        .set("Authorization", &format!("Bearer {token}"));
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => {
            let v: serde_json::Value = r.into_json()?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            anyhow::bail!("the server answered {code}: {message}")
        }
        Err(e) => Err(anyhow::anyhow!("cannot reach {url}: {e}")),
    }
}

/// `tether admin …`: thin clients of the operator endpoints.
fn admin(config: &Config, cmd: AdminCommand) -> anyhow::Result<()> {
    // Version ids contain '@', which is fine in a path segment.
    match cmd {
        AdminCommand::Keys(KeysCommand::Create { source, url, token }) => admin_call(
            config,
            Remote { url, token },
            "POST",
            "/admin/keys",
            Some(serde_json::json!({ "source": source })),
        ),
        AdminCommand::Versions { remote } => {
            admin_call(config, remote, "GET", "/admin/versions", None)
        }
        AdminCommand::Promote { id, reason, remote } => admin_call(
            config,
            remote,
            "POST",
            &format!("/admin/versions/{id}/promote"),
            Some(serde_json::json!({ "reason": reason })),
        ),
        AdminCommand::Rollback { to, reason, remote } => admin_call(
            config,
            remote,
            "POST",
            "/admin/rollback",
            Some(serde_json::json!({ "to": to, "reason": reason })),
        ),
        AdminCommand::Retire { id, reason, remote } => admin_call(
            config,
            remote,
            "POST",
            &format!("/admin/versions/{id}/retire"),
            Some(serde_json::json!({ "reason": reason })),
        ),
    }
}

/// `tether chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Maximum tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Repetition penalty (1.0: off).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Random seed (same seed, same text).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Model: default, a .gguf file, a Hugging Face folder or hf:ORG/NAME[@rev].
    #[arg(long)]
    pub model: Option<String>,
    /// Compute path: f32 (faithful), f16, or q8 (8-bit activations).
    #[arg(long)]
    pub compute: Option<ComputePath>,
}

/// `tether model …`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download and verify the default model into the cache ($TETHER_HOME).
    Fetch {
        /// Download again even if a verified copy is cached.
        #[arg(long)]
        force: bool,
    },
    /// Print architecture, size, quantization, context, special tokens and template.
    Info {
        /// Model spec (default: the configured model).
        spec: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Compute path to load with.
        #[arg(long)]
        compute: Option<ComputePath>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve(&mut config, args),
        Command::Admin(cmd) => admin(&config, cmd),
        Command::Chat(args) => chat(&config, args),
        Command::Safety(cmd) => safety(&config, cmd),
        Command::Privacy(cmd) => privacy(&config, cmd),
        Command::Data(DataCommand::Export { out, data_dir }) => {
            if let Some(d) = data_dir {
                config.server.data_dir = d.display().to_string();
            }
            export(&config, out)
        }
        Command::Model(ModelCommand::Fetch { force }) => {
            let home = fetch::tether_home();
            let cached = fetch::default_model_path(&home);
            let verified =
                !force && cached.is_file() && fetch::sha256_file(&cached)? == fetch::DEFAULT_SHA256;
            let path = if verified {
                tracing::info!("the default model is already cached and verified");
                cached
            } else {
                fetch::fetch_default_model(&home)?
            };
            println!("{}", path.display());
            Ok(())
        }
        Command::Model(ModelCommand::Info {
            spec,
            json,
            compute,
        }) => {
            let spec = spec.unwrap_or_else(|| config.model.spec.clone());
            let model = load(&spec, compute.unwrap_or(config.model.compute))?;
            let info = model.info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
            Ok(())
        }
    }
}

fn serve(config: &mut Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(m) = args.model {
        config.model.spec = m;
    }
    if let Some(h) = args.host {
        config.server.host = h;
    }
    if let Some(p) = args.port {
        config.server.port = p;
    }
    if let Some(d) = args.data_dir {
        config.server.data_dir = d.display().to_string();
    }
    if let Some(c) = args.compute {
        config.model.compute = c;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        crate::server::serve(listener, config.clone(), shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn privacy(config: &Config, cmd: PrivacyCommand) -> anyhow::Result<()> {
    use crate::privacy::{offline, Anonymizer, Operator};
    let anonymizer = Anonymizer::new(config.privacy.salt.clone());
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match cmd {
        PrivacyCommand::Scan => {
            offline::scan(&anonymizer, stdin, stdout)?;
        }
        PrivacyCommand::Eval { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let examples = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str::<offline::Labelled>(l)
                        .with_context(|| format!("{}:{}", file.display(), i + 1))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let scores = offline::evaluate(&anonymizer, &examples);
            println!("| entity | gold | predicted | precision [95% CI] | recall [95% CI] | exact-span recall |");
            println!("|---|---|---|---|---|---|");
            for s in scores {
                println!(
                    "| {} | {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.3} |",
                    s.entity,
                    s.gold,
                    s.predicted,
                    s.precision,
                    s.precision_ci.0,
                    s.precision_ci.1,
                    s.recall,
                    s.recall_ci.0,
                    s.recall_ci.1,
                    s.exact_recall
                );
            }
        }
        PrivacyCommand::Redact { operator } => {
            let op = match operator {
                Some(o) => serde_json::from_value::<Operator>(serde_json::Value::String(o.clone()))
                    .map_err(|_| {
                        anyhow::anyhow!("unknown operator {o:?}: use replace, redact, mask or hash")
                    })?,
                None => config.privacy.operator.clone(),
            };
            offline::redact(&anonymizer, &op, stdin, stdout)?;
        }
    }
    Ok(())
}

fn export(config: &Config, out: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = crate::server::data_dir(config);
    let store = crate::storage::Store::open(&dir)?;
    let cascade = if config.safety.enabled {
        Some(crate::safety::Cascade::open(&config.safety, &dir, 0)?.0)
    } else {
        None
    };
    let report = match &out {
        Some(p) => {
            let f =
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            crate::privacy::offline::export(&store, cascade.as_ref(), std::io::BufWriter::new(f))
        }
        None => crate::privacy::offline::export(
            &store,
            cascade.as_ref(),
            std::io::BufWriter::new(std::io::stdout().lock()),
        ),
    }
    .map_err(|e| anyhow::anyhow!("exporting from {}: {e}", dir.display()))?;
    eprintln!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn safety(config: &Config, cmd: SafetyCommand) -> anyhow::Result<()> {
    use crate::safety::{offline, Cascade, Direction};
    let data_dir = crate::server::data_dir(config);
    // Training data and the trained file live in the folder in use, else ./safety.
    let dir = crate::safety::resolve_dir(&config.safety, &data_dir)?
        .unwrap_or_else(|| PathBuf::from("safety"));
    let cascade =
        || -> anyhow::Result<Cascade> { Ok(Cascade::open(&config.safety, &data_dir, 0)?.0) };
    match cmd {
        SafetyCommand::Train { data, out, epochs } => {
            let data = data.unwrap_or_else(|| dir.join("data").join("train"));
            let out = out.unwrap_or_else(|| dir.join(crate::safety::CLASSIFIER_FILE));
            let opts = crate::safety::classifier::TrainOptions {
                epochs,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let n = offline::train(&data, &out, &opts)?;
            eprintln!(
                "trained on {n} examples from {} in {:.1}s; wrote {}",
                data.display(),
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        SafetyCommand::Classify { output, no_probe } => {
            let c = cascade()?;
            let d = if output {
                Direction::Output
            } else {
                Direction::Input
            };
            let model = if output && !no_probe && c.probe().is_some() {
                Some(load(&config.model.spec, config.model.compute)?)
            } else {
                None
            };
            let stdin = std::io::stdin().lock();
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            offline::classify(&c, d, model.as_ref(), stdin, stdout).context("classifying stdin")?;
            Ok(())
        }
        SafetyCommand::TrainProbe {
            data,
            model_answers,
            out,
            layer,
        } => {
            let data = data.unwrap_or_else(|| dir.join("data").join("train"));
            let model_answers = model_answers.unwrap_or_else(|| dir.join("data").join("probe"));
            let out = out.unwrap_or_else(|| dir.join(crate::safety::PROBE_FILE));
            let examples = offline::probe_training_set(&data, Some(&model_answers))?;
            let model = load(&config.model.spec, config.model.compute)?;
            let opts = crate::safety::probe::TrainOptions {
                layer,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let probe = offline::train_probe(&model, &examples, &opts)?;
            probe.save(&out)?;
            eprintln!(
                "trained the layer-{layer} probe on {} answers from {} in {:.0}s; wrote {}",
                examples.len(),
                data.display(),
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        SafetyCommand::Eval {
            file,
            json,
            output,
            no_probe,
        } => {
            let c = cascade()?;
            let file = file.unwrap_or_else(|| dir.join("data").join("heldout.jsonl"));
            let examples = crate::safety::classifier::read_examples(&file)?;
            let d = if output {
                Direction::Output
            } else {
                Direction::Input
            };
            let report = if output && !no_probe && c.probe().is_some() {
                let model = load(&config.model.spec, config.model.compute)?;
                offline::evaluate_with_probe(&c, &model, &examples)?
            } else {
                offline::evaluate(&c, &examples, d)
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

fn load(spec: &str, compute: ComputePath) -> anyhow::Result<LoadedModel> {
    let spec: ModelSpec = spec.parse()?;
    let opts = LoadOptions {
        compute,
        ..LoadOptions::default()
    };
    LoadedModel::load(&spec, &opts).with_context(|| format!("loading model {spec}"))
}

fn chat(config: &Config, args: ChatArgs) -> anyhow::Result<()> {
    let spec = args.model.unwrap_or_else(|| config.model.spec.clone());
    let model = load(&spec, args.compute.unwrap_or(config.model.compute))?;
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", args.prompt));
    let prompt = model.encode_chat(&messages)?;
    let params = SamplingParams {
        temperature: args.temperature.unwrap_or(config.generation.temperature),
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args
            .repetition_penalty
            .unwrap_or(config.generation.repetition_penalty),
        seed: args.seed,
        max_tokens: args.max_tokens.unwrap_or(config.generation.max_tokens),
        stop: args.stop,
        ..SamplingParams::default()
    };
    let mut out = std::io::stdout().lock();
    let completion = generate(
        &model.llama,
        &model.tokenizer,
        &prompt,
        &params,
        None,
        |piece| {
            // A closed stdout (e.g. `| head`) ends generation quietly.
            out.write_all(piece.as_bytes())
                .and_then(|_| out.flush())
                .is_ok()
        },
    )?;
    let _ = writeln!(out);
    tracing::debug!(
        prompt_tokens = completion.prompt_tokens,
        completion_tokens = completion.tokens.len(),
        finish_reason = ?completion.finish_reason,
        "done"
    );
    Ok(())
}

fn print_info(info: &crate::model::ModelInfo) {
    let c = &info.config;
    println!("name:            {}", info.name);
    println!("source:          {}", info.source);
    println!("architecture:    {:?}", c.architecture);
    println!(
        "parameters:      {} ({:.1}M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    let quant: Vec<String> = info
        .quantization
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    println!("tensor types:    {}", quant.join(", "));
    println!("compute path:    {}", info.compute);
    println!("weights in RAM:  {:.1} MB", info.weight_bytes as f64 / 1e6);
    println!("context length:  {}", info.context_length);
    println!(
        "layers/heads:    {} layers, {} heads ({} kv), head dim {}, hidden {}, ffn {}",
        c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size, c.intermediate_size
    );
    println!(
        "rope:            theta {}, {:?}, scaling {:?}",
        c.rope_theta, c.rope_layout, c.rope_scaling
    );
    println!("tied embeddings: {}", c.tie_word_embeddings);
    println!(
        "bos / eos:       {:?} / {:?}",
        info.bos_token, info.eos_token
    );
    println!("stop tokens:     {}", info.stop_tokens.join(" "));
    let special: Vec<String> = info
        .special_tokens
        .iter()
        .map(|(i, t)| format!("{i}={t}"))
        .collect();
    println!("special tokens:  {}", special.join(" "));
    println!("chat template:\n{}", info.chat_template);
}
