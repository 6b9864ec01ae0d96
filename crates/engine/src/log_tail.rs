//! The end of a release's log, quoted in failure reasons.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const MAX_TAIL_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file (at most 16 KiB), lossily decoded;
/// empty when the file is missing or unreadable.
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(MAX_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity((length - start) as usize);
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    // A partial first line (cut by the byte limit) is dropped.
    let skip_partial = usize::from(start > 0 && all.len() > 1);
    let from = all.len().saturating_sub(lines).max(skip_partial);
    all[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "one\ntwo\nthree\nfour\n").expect("write");
        assert_eq!(tail_lines(&path, 2), "three\nfour");
        assert_eq!(tail_lines(&path, 10), "one\ntwo\nthree\nfour");
        assert_eq!(tail_lines(&dir.path().join("missing"), 3), "");
    }
}
