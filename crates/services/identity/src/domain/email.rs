use super::Invalid;

/// RFC 5321's limit on a forward path.
pub const EMAIL_LEN_MAX: usize = 254;
const LOCAL_PART_LEN_MAX: usize = 64;

/// An email address as an account name: trimmed, lowercased, and shaped
/// like `local@domain.tld`. Deliverability is not checked here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let refuse = |why: &str| Err(Invalid(format!("not a valid email address: {why}")));
        // The limit applies to what was sent (the API contract's maxLength).
        if raw.chars().count() > EMAIL_LEN_MAX {
            return refuse("longer than 254 characters");
        }
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return refuse("empty");
        }
        if email.len() > EMAIL_LEN_MAX {
            return refuse("longer than 254 bytes");
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return refuse("contains white space or control characters");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return refuse("no @");
        };
        if local.is_empty() || local.len() > LOCAL_PART_LEN_MAX || local.contains('@') {
            return refuse("bad local part");
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return refuse("bad local part");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return refuse("bad domain");
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(Email::parse("first.last+tag@sub.example.org").is_ok());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "ada example@x.com",
            "ada@-x.com",
            "ada@x..com",
            ".ada@x.com",
            "a..b@x.com",
            &format!("{}@x.com", "a".repeat(65)),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
