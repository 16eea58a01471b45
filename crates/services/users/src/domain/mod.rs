//! A user's profile, with no I/O: what may be in it and how a change is
//! checked. Identity owns credentials; users owns what people say about
//! themselves.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const DISPLAY_NAME_CHARS_MAX: usize = 100;
pub const ADDRESSES_MAX: usize = 10;
/// Any one address line, city, label or postal code.
pub const ADDRESS_FIELD_CHARS_MAX: usize = 200;
pub const LANGUAGE_TAG_LEN_MAX: usize = 35;

/// A postal address. `country` is ISO 3166-1 alpha-2 (`GB`, `FR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// BCP 47 language tag, e.g. `en` or `pt-BR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default)]
    pub marketing_emails: bool,
}

/// What a user may change. Anything else in the body (`id`, `email`,
/// `roles`, unknown fields) is refused before this is built.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "kit::http::objects::optional_list")]
    pub addresses: Option<Vec<Address>>,
    #[serde(default, deserialize_with = "kit::http::objects::optional")]
    pub preferences: Option<Preferences>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The account id identity gave.
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub addresses: Vec<Address>,
    pub preferences: Preferences,
    /// Starts at 1, bumped by every change; the ETag.
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// One refused field: a JSON Pointer into the request and why.
pub type FieldProblem = (String, String);

impl Profile {
    /// A new profile for a just-registered account.
    pub fn registered(id: &str, email: &str, display_name: &str, now_ms: u64) -> Self {
        Self {
            id: id.into(),
            email: email.into(),
            display_name: display_name.into(),
            addresses: Vec::new(),
            preferences: Preferences::default(),
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// The profile with `patch` applied and its version bumped, or every
    /// field that is wrong.
    pub fn patched(&self, patch: ProfilePatch, now_ms: u64) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut next = self.clone();
        if let Some(name) = patch.display_name {
            let too_long = name.chars().count() > DISPLAY_NAME_CHARS_MAX;
            let name = name.trim();
            if name.is_empty() || too_long || name.chars().any(char::is_control) {
                problems.push((
                    "/display_name".into(),
                    format!("1 to {DISPLAY_NAME_CHARS_MAX} characters, no control characters"),
                ));
            }
            next.display_name = name.to_owned();
        }
        if let Some(addresses) = patch.addresses {
            if addresses.len() > ADDRESSES_MAX {
                problems.push((
                    "/addresses".into(),
                    format!("at most {ADDRESSES_MAX} addresses"),
                ));
            }
            for (i, address) in addresses.iter().enumerate() {
                check_address(i, address, &mut problems);
            }
            next.addresses = addresses;
        }
        if let Some(preferences) = patch.preferences {
            if let Some(language) = &preferences.language
                && !is_language_tag(language)
            {
                problems.push((
                    "/preferences/language".into(),
                    "not a BCP 47 language tag".into(),
                ));
            }
            next.preferences = preferences;
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        next.version += 1;
        next.updated_at_ms = now_ms;
        Ok(next)
    }
}

fn check_address(i: usize, address: &Address, problems: &mut Vec<FieldProblem>) {
    let fields = [
        ("label", address.label.as_deref(), false),
        ("line1", Some(address.line1.as_str()), true),
        ("line2", address.line2.as_deref(), false),
        ("city", Some(address.city.as_str()), true),
        ("postal_code", Some(address.postal_code.as_str()), true),
    ];
    for (name, value, required) in fields {
        let Some(value) = value else { continue };
        let blank = value.trim().is_empty();
        if (required && blank)
            || value.chars().count() > ADDRESS_FIELD_CHARS_MAX
            || value.chars().any(char::is_control)
        {
            problems.push((
                format!("/addresses/{i}/{name}"),
                format!("1 to {ADDRESS_FIELD_CHARS_MAX} characters, no control characters"),
            ));
        }
    }
    let country_ok =
        address.country.len() == 2 && address.country.bytes().all(|b| b.is_ascii_uppercase());
    if !country_ok {
        problems.push((
            format!("/addresses/{i}/country"),
            "an ISO 3166-1 alpha-2 code such as GB".into(),
        ));
    }
}

fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or("");
    tag.len() <= LANGUAGE_TAG_LEN_MAX
        && (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> Address {
        Address {
            label: Some("home".into()),
            line1: "1 High Street".into(),
            line2: None,
            city: "London".into(),
            postal_code: "N1 1AA".into(),
            country: "GB".into(),
        }
    }

    #[test]
    fn a_valid_patch_bumps_the_version() {
        let profile = Profile::registered("id", "a@b.co", "Ada", 1);
        let next = profile
            .patched(
                ProfilePatch {
                    display_name: Some(" Ada L ".into()),
                    addresses: Some(vec![address()]),
                    preferences: Some(Preferences {
                        language: Some("pt-BR".into()),
                        marketing_emails: true,
                    }),
                },
                2,
            )
            .unwrap();
        assert_eq!(
            (next.display_name.as_str(), next.version, next.updated_at_ms),
            ("Ada L", 2, 2)
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let profile = Profile::registered("id", "a@b.co", "Ada", 1);
        let mut bad = address();
        bad.country = "gb".into();
        bad.city = " ".into();
        let problems = profile
            .patched(
                ProfilePatch {
                    display_name: Some("".into()),
                    addresses: Some(vec![address(), bad]),
                    preferences: Some(Preferences {
                        language: Some("english!".into()),
                        marketing_emails: false,
                    }),
                },
                2,
            )
            .unwrap_err();
        let pointers: Vec<_> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/display_name",
                "/addresses/1/city",
                "/addresses/1/country",
                "/preferences/language"
            ]
        );
    }
}
