//! Children's output merged into one stream, each line prefixed with its
//! role and replica.

use std::io::Write;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// A longer line is cut and the rest printed as a further line, so that a
/// child printing without newlines cannot grow `up`'s memory.
pub const LINE_BYTES_MAX: usize = 16 * 1024;

pub async fn relay(prefix: String, source: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(source);
    let mut line = Vec::with_capacity(256);
    loop {
        let buffer = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buffer) => buffer,
        };
        let (take, complete) = match buffer.iter().position(|&b| b == b'\n') {
            Some(i) if line.len() + i <= LINE_BYTES_MAX => (i + 1, true),
            _ => {
                let room = LINE_BYTES_MAX - line.len();
                (buffer.len().min(room), buffer.len() >= room)
            }
        };
        line.extend_from_slice(&buffer[..take]);
        reader.consume(take);
        if complete {
            emit(&prefix, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&prefix, &line);
    }
}

fn emit(prefix: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix} | {}", text.trim_end_matches(['\n', '\r']));
}
