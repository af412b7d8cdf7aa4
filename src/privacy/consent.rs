//! Consent to log conversations: a default per key (from configuration), overridden
//! per request by the `x-tether-log: on|off` header.

use serde::{Deserialize, Serialize};

/// Whether conversations are logged when a request says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consent {
    /// Not logged unless the request sends `x-tether-log: on`.
    OptIn,
    /// Logged (anonymized, sampled) unless the request sends `x-tether-log: off`.
    OptOut,
}

/// The request header that overrides the default.
pub const HEADER: &str = "x-tether-log";

/// Errors in the header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the x-tether-log header must be `on` or `off`")]
pub struct BadHeader;

/// Whether this request's conversation may be logged.
pub fn allowed(default: Consent, header: Option<&str>) -> Result<bool, BadHeader> {
    match header.map(|h| h.trim().to_ascii_lowercase()) {
        None => Ok(default == Consent::OptOut),
        Some(h) if matches!(h.as_str(), "on" | "1" | "true" | "yes") => Ok(true),
        Some(h) if matches!(h.as_str(), "off" | "0" | "false" | "no") => Ok(false),
        Some(_) => Err(BadHeader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_overrides_the_default() {
        assert_eq!(allowed(Consent::OptIn, None), Ok(false));
        assert_eq!(allowed(Consent::OptOut, None), Ok(true));
        assert_eq!(allowed(Consent::OptIn, Some("on")), Ok(true));
        assert_eq!(allowed(Consent::OptOut, Some("OFF")), Ok(false));
        assert_eq!(allowed(Consent::OptOut, Some("maybe")), Err(BadHeader));
    }
}
