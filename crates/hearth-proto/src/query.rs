//! Query strings of the file endpoints (`?path=/abs/path&mode=0644`).
//!
//! Paths may contain any byte but NUL, so both sides must agree on one escaping: every byte
//! outside `[A-Za-z0-9-._~/]` is percent-encoded. Kept here so client and daemon share it.

/// Why a query string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("bad percent-escape at byte {0} of the query string")]
    BadEscape(usize),
    #[error("query parameter {0:?} is not valid UTF-8 after decoding")]
    NotUtf8(String),
}

/// Percent-encodes one query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits and decodes a query string into `(name, value)` pairs; `+` means a space.
pub fn parse(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut pairs = Vec::new();
    let mut offset = 0;
    for part in query.split('&') {
        if !part.is_empty() {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name, offset)?;
            let value = decode(value, offset + name.len() + 1).and_then(|v| {
                String::from_utf8(v).map_err(|_| QueryError::NotUtf8(lossy(&name)))
            })?;
            pairs.push((lossy(&name), value));
        }
        offset += part.len() + 1;
    }
    Ok(pairs)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode(text: &str, offset: usize) -> Result<Vec<u8>, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(QueryError::BadEscape(offset + i))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_paths() {
        for path in ["/a b/c&d=e", "/ünï/%41+", "/plain/path.txt", "/x?y#z"] {
            let query = format!("path={}&mode=0644", encode(path));
            let pairs = parse(&query).unwrap();
            assert_eq!(pairs[0], ("path".to_string(), path.to_string()));
            assert_eq!(pairs[1], ("mode".to_string(), "0644".to_string()));
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        assert_eq!(parse("path=%4"), Err(QueryError::BadEscape(5)));
        assert_eq!(parse("a=1&path=%zz"), Err(QueryError::BadEscape(9)));
        assert!(matches!(parse("path=%ff"), Err(QueryError::NotUtf8(_))));
    }
}
