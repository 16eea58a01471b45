use super::Invalid;

/// NIST SP 800-63B asks for at least 8; we ask for 12.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// Bounds the hashing work an attacker can ask for.
pub const PASSWORD_CHARS_MAX: usize = 128;

/// Passwords people pick most, long enough to pass the length rule. Checked
/// after lowercasing; shorter ones already fail on length.
const COMMON: &str = include_str!("common_passwords.txt");

/// A password that passed the policy. Never logged, never stored.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Checks a new password against the policy.
    pub fn new(raw: &str) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < PASSWORD_CHARS_MIN {
            return Err(Invalid(format!(
                "password must be at least {PASSWORD_CHARS_MIN} characters"
            )));
        }
        if chars > PASSWORD_CHARS_MAX {
            return Err(Invalid(format!(
                "password must be at most {PASSWORD_CHARS_MAX} characters"
            )));
        }
        if is_common(raw) {
            return Err(Invalid("password is too common".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn is_common(raw: &str) -> bool {
    let lowered = raw.to_lowercase();
    if COMMON.lines().any(|line| line.trim() == lowered) {
        return true;
    }
    let chars: Vec<char> = lowered.chars().collect();
    // One character repeated, or a run up or down the alphabet or digits.
    let repeated = chars.windows(2).all(|w| w[0] == w[1]);
    let ascending = chars.windows(2).all(|w| w[1] as u32 == w[0] as u32 + 1);
    let descending = chars.windows(2).all(|w| w[0] as u32 == w[1] as u32 + 1);
    repeated || ascending || descending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(Password::new("correct horse battery").is_ok());
        assert!(Password::new("short").is_err());
        assert!(
            Password::new("Password1234").is_err(),
            "common list, any case"
        );
        assert!(Password::new("aaaaaaaaaaaaaa").is_err());
        assert!(Password::new("abcdefghijklmn").is_err());
        assert!(Password::new(&"x1".repeat(65)).is_err(), "too long");
        assert!(Password::new("ünïcödé-pässwörd").is_ok());
    }

    #[test]
    fn list_entries_are_lowercase_and_long_enough() {
        for line in COMMON.lines().filter(|l| !l.trim().is_empty()) {
            assert_eq!(line, line.to_lowercase(), "{line}");
            assert!(
                line.chars().count() >= PASSWORD_CHARS_MIN,
                "{line} can never match"
            );
        }
    }
}
