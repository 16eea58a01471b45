//! What identity is about, with no I/O: accounts and the values that make
//! them up. Invalid values cannot be constructed; handlers and commands get
//! proven data.

mod account;
mod email;
mod password;
mod profile;

pub use account::{Account, AccountId, Role};
pub use email::Email;
pub use password::{PASSWORD_CHARS_MAX, PASSWORD_CHARS_MIN, Password};
pub use profile::DisplayName;

/// Why a value was refused; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);
