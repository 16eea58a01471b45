//! No path the gateway lets through can leave the route prefix it matched,
//! however an upstream decodes it: percent-decoding, `\` taken as `/`,
//! dot segments removed (RFC 3986 §5.2.4), empty segments collapsed.

use gateway::path::check;
use proptest::prelude::*;

const PREFIX: &str = "/api/v1/users/";

/// Pieces that have let requests escape a prefix somewhere.
const PIECES: &[&str] = &[
    "a", "me", "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%5C",
    "\\", "%00", "%0a", "%", "%2", "%zz", "%c3", "%c3%a9", "%ff", "%25", "%252e", ";", "?",
    "internal", "%u002e", "..;", "%c0%ae",
];

/// What the most lenient upstream would make of a path.
fn resolve(raw: &str) -> String {
    let mut bytes = Vec::new();
    let raw = raw.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                i += 3;
            }
            (byte, _) => {
                bytes.push(byte);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn nothing_that_passes_leaves_its_prefix(
        pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..12)
    ) {
        let raw = format!("{PREFIX}{}", pieces.concat());
        if check(&raw).is_ok() {
            let resolved = resolve(&raw);
            prop_assert!(
                resolved.starts_with(PREFIX.trim_end_matches('/')),
                "{raw} resolves to {resolved}"
            );
            prop_assert!(!resolved.starts_with("/internal"), "{raw} resolves to {resolved}");
        }
    }

    #[test]
    fn any_string_is_answered_without_a_panic(raw in ".*") {
        let _ = check(&raw);
    }
}
