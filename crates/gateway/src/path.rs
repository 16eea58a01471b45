//! The request path, checked before routing. A path that passes can be
//! matched against route prefixes as it is: no decoding or dot-segment
//! removal an upstream might do can take it outside the prefix it matched.

use std::borrow::Cow;

/// Why a path is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("the path has an empty segment (//)")]
    EmptySegment,
    #[error("the path has a . or .. segment")]
    DotSegment,
    #[error("the path has an encoded / or \\")]
    EncodedSeparator,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a NUL or control character")]
    Control,
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
    #[error("the path is not UTF-8 once decoded")]
    NotUtf8,
}

/// Checks `raw` (the path as received, without the query): absolute, no
/// empty segment, no `.` or `..` segment even percent-encoded, no `\`, no
/// encoded `/` or `\`, no NUL or control character, well-formed escapes,
/// UTF-8 once decoded. A trailing `/` is allowed.
pub fn check(raw: &str) -> Result<(), PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.is_empty() {
        return Ok(());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // Most paths are plain: visible ASCII, no escape, no backslash. One
    // pass tells them, and their segments need only the structural checks.
    let plain = rest
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
    for segment in rest.split('/') {
        let decoded = match plain {
            true => Cow::Borrowed(segment),
            false => decode(segment)?,
        };
        if decoded.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if plain {
            continue;
        }
        if decoded.chars().any(char::is_control) {
            return Err(PathError::Control);
        }
        if decoded.contains(['/', '\\']) {
            return Err(if segment.contains('\\') {
                PathError::Backslash
            } else {
                PathError::EncodedSeparator
            });
        }
    }
    Ok(())
}

/// Percent-decodes one segment, refusing malformed escapes and bytes that
/// are not UTF-8.
fn decode(segment: &str) -> Result<Cow<'_, str>, PathError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "/",
            "/api/v1/users/me",
            "/api/v1/users/",
            "/a%20b/caf%C3%A9",
            "/api/v1/catalog/items/a.b",
            "/...",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_could_escape_or_confuse() {
        for (bad, why) in [
            ("api", PathError::NotAbsolute),
            ("//api", PathError::EmptySegment),
            ("/api//users", PathError::EmptySegment),
            ("/api/../internal", PathError::DotSegment),
            ("/api/./users", PathError::DotSegment),
            ("/api/%2e%2e/internal", PathError::DotSegment),
            ("/api/%2E./x", PathError::DotSegment),
            ("/api/a%2fb", PathError::EncodedSeparator),
            ("/api/a%5Cb", PathError::EncodedSeparator),
            ("/api\\..\\x", PathError::Backslash),
            ("/api/a%00", PathError::Control),
            ("/api/a%0a", PathError::Control),
            ("/api/%zz", PathError::BadEscape),
            ("/api/%4", PathError::BadEscape),
            ("/api/%c3%28", PathError::NotUtf8),
            ("/api/%ff", PathError::NotUtf8),
        ] {
            assert_eq!(check(bad), Err(why), "{bad}");
        }
    }
}
