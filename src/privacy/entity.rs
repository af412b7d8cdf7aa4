//! Entity types, named as Microsoft Presidio names them so existing tooling can read
//! our output, and the spans recognizers report.

use serde::{Deserialize, Serialize};

/// A kind of personal or secret data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Entity {
    /// `name@example.com`.
    EmailAddress,
    /// International and national phone numbers.
    PhoneNumber,
    /// Payment cards (Luhn-checked, known issuer ranges).
    CreditCard,
    /// International bank account numbers (mod-97 checked).
    IbanCode,
    /// IPv4 and IPv6 addresses.
    IpAddress,
    /// US social security numbers (valid ranges only).
    UsSsn,
    /// Web addresses.
    Url,
    /// Network hardware addresses.
    MacAddress,
    /// Cryptocurrency wallet addresses (Bitcoin, Ethereum).
    Crypto,
    /// Dates of birth (dates with birth context).
    DateTime,
    /// People's names.
    Person,
    /// Street addresses and places.
    Location,
    /// API keys, tokens, private keys.
    Secret,
}

impl Entity {
    /// Every entity type.
    pub const ALL: [Entity; 13] = [
        Self::EmailAddress,
        Self::PhoneNumber,
        Self::CreditCard,
        Self::IbanCode,
        Self::IpAddress,
        Self::UsSsn,
        Self::Url,
        Self::MacAddress,
        Self::Crypto,
        Self::DateTime,
        Self::Person,
        Self::Location,
        Self::Secret,
    ];

    /// The Presidio name (`EMAIL_ADDRESS`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::EmailAddress => "EMAIL_ADDRESS",
            Self::PhoneNumber => "PHONE_NUMBER",
            Self::CreditCard => "CREDIT_CARD",
            Self::IbanCode => "IBAN_CODE",
            Self::IpAddress => "IP_ADDRESS",
            Self::UsSsn => "US_SSN",
            Self::Url => "URL",
            Self::MacAddress => "MAC_ADDRESS",
            Self::Crypto => "CRYPTO",
            Self::DateTime => "DATE_TIME",
            Self::Person => "PERSON",
            Self::Location => "LOCATION",
            Self::Secret => "SECRET",
        }
    }

    /// `<EMAIL_ADDRESS>`: the untyped-number placeholder used for redaction.
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::EmailAddress => "<EMAIL_ADDRESS>",
            Self::PhoneNumber => "<PHONE_NUMBER>",
            Self::CreditCard => "<CREDIT_CARD>",
            Self::IbanCode => "<IBAN_CODE>",
            Self::IpAddress => "<IP_ADDRESS>",
            Self::UsSsn => "<US_SSN>",
            Self::Url => "<URL>",
            Self::MacAddress => "<MAC_ADDRESS>",
            Self::Crypto => "<CRYPTO>",
            Self::DateTime => "<DATE_TIME>",
            Self::Person => "<PERSON>",
            Self::Location => "<LOCATION>",
            Self::Secret => "<SECRET>",
        }
    }

    /// Parses a Presidio name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One recognised entity: byte offsets into the text, and a confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// What it is.
    pub entity: Entity,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset after the last byte.
    pub end: usize,
    /// Confidence in `[0, 1]`.
    pub score: f32,
}
