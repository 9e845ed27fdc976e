//! Incremental detokenization for streaming output.
//!
//! Byte-level tokens can end in the middle of a UTF-8 character (an emoji or
//! CJK character is often split over two or three tokens). The detokenizer
//! keeps the bytes of an incomplete character back until the token that
//! completes it arrives, so every string it hands out is whole characters.
//! Invalid byte sequences become U+FFFD exactly where `String::from_utf8_lossy`
//! on the full output would put them, so the concatenation of all pushes
//! equals [`Tokenizer::decode`](crate::Tokenizer::decode) of all the ids
//! (apart from an incomplete character still held back at the end, which
//! [`IncrementalDetokenizer::finish`] flushes).

use crate::Tokenizer;

/// Per-sequence streaming detokenizer.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDetokenizer {
    skip_special_tokens: bool,
    /// Bytes of a character not yet complete (at most 3 once normalized).
    pending: Vec<u8>,
    /// All text emitted so far.
    text: String,
}

impl IncrementalDetokenizer {
    /// A detokenizer for output that starts fresh.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            pending: Vec::new(),
            text: String::new(),
        }
    }

    /// A detokenizer for output that continues `prompt_ids`. Only the prompt's
    /// trailing bytes of an unfinished UTF-8 character matter (possible when
    /// the prompt was given as ids): they are held so that the first output
    /// tokens can complete that character. Nothing of the prompt is counted
    /// in [`text`](Self::text) otherwise.
    pub fn with_prompt(tok: &Tokenizer, prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let mut d = Self::new(skip_special_tokens);
        // A character is at most 4 bytes, so only the last few tokens can
        // contribute to an unfinished one. Walk back until 4 bytes are seen.
        let mut tail: Vec<u8> = Vec::new();
        let mut start = prompt_ids.len();
        let mut seen = 0usize;
        while start > 0 && seen < 4 {
            start -= 1;
            seen += d.token_bytes(tok, prompt_ids[start]).len();
        }
        for &id in &prompt_ids[start..] {
            tail.extend_from_slice(d.token_bytes(tok, id));
        }
        d.pending = incomplete_suffix(&tail).to_vec();
        d
    }

    fn token_bytes<'t>(&self, tok: &'t Tokenizer, id: u32) -> &'t [u8] {
        if self.skip_special_tokens && tok.is_special(id) {
            return &[];
        }
        tok.token_bytes(id).unwrap_or(&[])
    }

    /// Adds one generated token and returns the text it completes (possibly
    /// empty while a character is still incomplete, possibly several
    /// characters when it completes one held back). Ids outside the
    /// vocabulary (padded embedding rows) contribute nothing.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let bytes = self.token_bytes(tok, id);
        if bytes.is_empty() {
            return String::new();
        }
        self.pending.extend_from_slice(bytes);
        let new = drain_valid(&mut self.pending);
        self.text.push_str(&new);
        new
    }

    /// Adds several tokens; returns the text they complete.
    pub fn push_all(&mut self, tok: &Tokenizer, ids: &[u32]) -> String {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(tok, id));
        }
        out
    }

    /// Ends the sequence: any held-back bytes of an incomplete character are
    /// emitted as U+FFFD (what a full decode shows for them).
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.text.push_str(&out);
        out
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }
}

/// Removes and returns the longest prefix of `buf` that can be decoded now.
/// Invalid sequences become U+FFFD (as `from_utf8_lossy` does); a trailing
/// incomplete but still possibly valid sequence stays in `buf`.
fn drain_valid(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut pos = 0usize;
    loop {
        match std::str::from_utf8(&buf[pos..]) {
            Ok(s) => {
                out.push_str(s);
                pos = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // Safe: from_utf8 reported these bytes as valid.
                if let Ok(s) = std::str::from_utf8(&buf[pos..pos + valid]) {
                    out.push_str(s);
                }
                pos += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos += n;
                    }
                    None => break, // incomplete tail: wait for more bytes
                }
            }
        }
    }
    buf.drain(..pos);
    out
}

/// The trailing bytes of `bytes` that start a UTF-8 character which is not
/// finished yet (empty when the tail is complete or invalid anyway).
fn incomplete_suffix(bytes: &[u8]) -> &[u8] {
    let mut buf = bytes.to_vec();
    let before = buf.len();
    let _ = drain_valid(&mut buf);
    &bytes[before - buf.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_holds_incomplete_tail() {
        let mut b = "a😀".as_bytes()[..3].to_vec(); // 'a' + 2 of 4 emoji bytes
        assert_eq!(drain_valid(&mut b), "a");
        assert_eq!(b.len(), 2);
        b.extend_from_slice(&"😀".as_bytes()[2..]);
        assert_eq!(drain_valid(&mut b), "😀");
        assert!(b.is_empty());
    }

    #[test]
    fn drain_replaces_invalid_like_lossy() {
        let cases: [&[u8]; 5] = [
            b"\xff",
            b"a\xc3(b",
            b"\xe2\x82",
            b"\xf0\x9f\x98\x80\xf0",
            b"\xed\xa0\x80x",
        ];
        for case in cases {
            // Feed byte by byte; the result plus a final lossy flush must
            // equal from_utf8_lossy of the whole.
            let mut buf = Vec::new();
            let mut out = String::new();
            for &byte in case {
                buf.push(byte);
                out.push_str(&drain_valid(&mut buf));
            }
            out.push_str(&String::from_utf8_lossy(&buf));
            assert_eq!(out, String::from_utf8_lossy(case), "{case:?}");
        }
    }

    #[test]
    fn incomplete_suffix_cases() {
        assert_eq!(incomplete_suffix(b"abc"), b"");
        assert_eq!(incomplete_suffix(b"ab\xe4\xb8"), b"\xe4\xb8");
        assert_eq!(incomplete_suffix(b"ab\xff"), b"");
        assert_eq!(incomplete_suffix(b""), b"");
    }
}
