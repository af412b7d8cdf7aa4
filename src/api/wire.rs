//! OpenAI-compatible request and response bodies. Only `api/` knows these types.

use serde::{Deserialize, Serialize};

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

/// Message content: a string, or an array of parts of which text parts are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part message.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message as clients send it.
#[derive(Debug, Clone, Deserialize)]
pub struct WireMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Deployment name, model name, or pinned version `NAME@vN`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// Sampling temperature, 0–2.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Tether extension: top-k sampling.
    pub top_k: Option<usize>,
    /// Tether extension: repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Legacy name of `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// Maximum generated tokens per choice.
    pub max_completion_tokens: Option<u64>,
    /// Number of choices.
    pub n: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Return logprobs of generated tokens.
    pub logprobs: Option<bool>,
    /// With `logprobs`, the number of alternatives per token (0–20).
    pub top_logprobs: Option<u64>,
    /// Stream chunks as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// End-user id (becomes part of the feedback source).
    pub user: Option<String>,
}

/// Token usage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens, all choices.
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
}

/// One alternative in `top_logprobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

/// Logprob of one generated token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenLogprobWire {
    /// Token text.
    pub token: String,
    /// Log-probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
    /// Most likely alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `logprobs` of a choice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprobWire>,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer.
    pub content: String,
}

/// One choice of a completion.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Index among the `n` choices.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Logprobs, when requested.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length` or `content_filter`.
    pub finish_reason: String,
    /// What the safety layer did to this answer, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyReport>,
}

/// `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// Unique, durable id (feedback refers to it).
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The version that answered.
    pub model: String,
    /// The choices.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// What the safety layer did to the prompt, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyReport>,
}

/// A streamed delta.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Delta {
    /// `assistant` in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice in a stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: usize,
    /// What is new.
    pub delta: Delta,
    /// Logprobs of the tokens in this delta.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
    /// What the safety layer did (on the chunk where it acted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyReport>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// Same id for every chunk of a completion.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The version that answers.
    pub model: String,
    /// Choices with news (empty in the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Usage, in the final chunk when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// An entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    /// `name@vN`.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// `tether`.
    pub owned_by: &'static str,
    /// Parent version.
    pub parent: Option<String>,
    /// `serving`, `candidate`, `canary`, `retired`, `rejected`.
    pub status: crate::registry::Status,
}

/// `POST /v1/tokenize`: text, or messages rendered with the chat template.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// Optional model name (must resolve if given).
    pub model: Option<String>,
    /// Raw text.
    pub text: Option<String>,
    /// Messages to render with the chat template (generation prompt added).
    pub messages: Option<Vec<WireMessage>>,
}

/// `POST /v1/detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Optional model name.
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateKeyRequest {
    /// Feedback source the key speaks for.
    pub source: String,
}

/// What the safety layer did to a prompt or an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SafetyReport {
    /// `input` (the prompt) or `output` (the answer).
    pub direction: &'static str,
    /// `block`, `rewrite` or `escalate`.
    pub action: &'static str,
    /// The categories that triggered it.
    pub categories: Vec<String>,
    /// The review-queue item, when escalated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_id: Option<i64>,
}

/// One moderation input item: a string or a text part.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModerationItem {
    /// Plain text.
    Text(String),
    /// `{"type": "text", "text": ...}`.
    Part(ContentPart),
}

/// `input` of a moderation request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModerationInput {
    /// One text.
    One(String),
    /// Several texts or parts.
    Many(Vec<ModerationItem>),
}

/// `POST /v1/moderations`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModerationRequest {
    /// What to classify.
    pub input: ModerationInput,
    /// Ignored (there is one safety model); accepted for compatibility.
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /admin/review/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecisionRequest {
    /// `approve` (the content was acceptable) or `reject` (it was not).
    pub decision: String,
    /// Free-text note for the record.
    #[serde(default)]
    pub note: Option<String>,
}
