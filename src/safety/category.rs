//! The safety categories and the two directions text flows in.

use serde::{Deserialize, Serialize};

/// What a text can be flagged for. See `safety/README.md` for the mapping to Llama
/// Guard 3's S1–S14 and OpenAI's moderation categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// Suicide and self-injury: intent, encouragement, instructions.
    #[serde(rename = "self-harm")]
    SelfHarm,
    /// Threats, incitement, instructions to hurt people, glorified violence.
    #[serde(rename = "violence")]
    Violence,
    /// Demeaning or dehumanising content about protected groups.
    #[serde(rename = "hate")]
    Hate,
    /// Insults, bullying and intimidation of individuals.
    #[serde(rename = "harassment")]
    Harassment,
    /// Explicit sexual content and propositions.
    #[serde(rename = "sexual")]
    Sexual,
    /// Any sexualisation of minors.
    #[serde(rename = "sexual/minors")]
    SexualMinors,
    /// Weapons, drugs, hacking, fraud and other crime.
    #[serde(rename = "illicit")]
    Illicit,
    /// Personal data about private individuals.
    #[serde(rename = "privacy")]
    Privacy,
    /// Jailbreaks and instruction overrides.
    #[serde(rename = "prompt-injection")]
    PromptInjection,
}

/// How many categories there are.
pub const N_CATEGORIES: usize = 9;

impl Category {
    /// Every category, in index order.
    pub const ALL: [Category; N_CATEGORIES] = [
        Self::SelfHarm,
        Self::Violence,
        Self::Hate,
        Self::Harassment,
        Self::Sexual,
        Self::SexualMinors,
        Self::Illicit,
        Self::Privacy,
        Self::PromptInjection,
    ];

    /// Position in [`Category::ALL`] (and in score arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in files and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::SelfHarm => "self-harm",
            Self::Violence => "violence",
            Self::Hate => "hate",
            Self::Harassment => "harassment",
            Self::Sexual => "sexual",
            Self::SexualMinors => "sexual/minors",
            Self::Illicit => "illicit",
            Self::Privacy => "privacy",
            Self::PromptInjection => "prompt-injection",
        }
    }

    /// Parses a name as written in files.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which way a text is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A prompt, before the model sees it.
    Input,
    /// An answer, before the client sees it.
    Output,
}

impl Direction {
    /// `input` or `output`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}
