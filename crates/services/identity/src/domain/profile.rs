use super::Invalid;

pub const DISPLAY_NAME_CHARS_MAX: usize = 100;

/// What other people see: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        // The limit applies to what was sent, as the API contract says, not
        // to what is left after trimming.
        if raw.chars().count() > DISPLAY_NAME_CHARS_MAX {
            return Err(Invalid(format!(
                "display name is longer than {DISPLAY_NAME_CHARS_MAX} characters"
            )));
        }
        let name = raw.trim();
        if name.is_empty() {
            return Err(Invalid("display name is empty".into()));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid("display name contains control characters".into()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_what_was_sent() {
        let padded = format!("  {}", "x".repeat(DISPLAY_NAME_CHARS_MAX - 1));
        assert!(DisplayName::parse(&padded).is_err(), "101 characters sent");
        assert!(DisplayName::parse(&"x".repeat(DISPLAY_NAME_CHARS_MAX)).is_ok());
        assert!(DisplayName::parse("   ").is_err());
    }
}
