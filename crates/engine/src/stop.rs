//! When a sequence stops, and what text it keeps.

use crate::output::{FinishReason, StopReason};
use crate::sequence::Sequence;
use crate::SamplingParams;

/// Checks `seq` after token `tok` was appended and `new_text_len` bytes were added to its text.
/// Truncates the text at a matched stop string. Order as vLLM: EOS, stop token ids, stop
/// strings, then length limits; min_tokens suppresses the first three.
pub fn check_stop(
    seq: &mut Sequence,
    tok: u32,
    new_text_len: usize,
    p: &SamplingParams,
    eos: Option<u32>,
    max_model_len: usize,
) -> Option<(FinishReason, Option<StopReason>)> {
    let n_out = seq.num_output_tokens();
    if n_out >= p.min_tokens as usize {
        if !p.ignore_eos && Some(tok) == eos {
            return Some((FinishReason::Stop, None));
        }
        if p.stop_token_ids.contains(&tok) {
            return Some((FinishReason::Stop, Some(StopReason::Token(tok))));
        }
        if let Some((s, cut)) = find_stop_string(
            &seq.text,
            new_text_len,
            &p.stop,
            p.include_stop_str_in_output,
        ) {
            seq.text.truncate(cut);
            return Some((FinishReason::Stop, Some(StopReason::Text(s))));
        }
    }
    if p.max_tokens.is_some_and(|m| n_out >= m as usize) || seq.tokens.len() >= max_model_len {
        return Some((FinishReason::Length, None));
    }
    None
}

/// Finds the earliest stop string that overlaps the newly added tail of `text`. Returns the
/// string and the length to truncate `text` to.
fn find_stop_string(
    text: &str,
    new_len: usize,
    stops: &[String],
    include: bool,
) -> Option<(String, usize)> {
    let mut best: Option<(usize, &String)> = None;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        // Only a match ending in the new text is new; start the search early enough for it.
        let mut from = text.len().saturating_sub(new_len + s.len() - 1);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(pos) = text[from..].find(s.as_str()) {
            let at = from + pos;
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, s));
            }
        }
    }
    best.map(|(at, s)| (s.clone(), if include { at + s.len() } else { at }))
}

/// Bytes of `text` safe to show while the sequence runs: a tail that could still become the
/// start of a stop string is held back (so streamed text never shows part of a stop string).
pub fn visible_len(text: &str, stops: &[String], include: bool) -> usize {
    if include {
        return text.len();
    }
    let hold = stops
        .iter()
        .map(|s| s.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut cut = text.len().saturating_sub(hold);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_found_across_chunks() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop_string("abc\n", 1, &stops, false), None);
        assert_eq!(
            find_stop_string("abc\n\n", 1, &stops, false),
            Some(("\n\n".into(), 3))
        );
        assert_eq!(find_stop_string("xxEN", 2, &stops, false), None);
        assert_eq!(
            find_stop_string("xxEND!", 2, &stops, true),
            Some(("END".into(), 5))
        );
        // A match entirely inside old text was already handled; not re-reported... but the
        // earliest match in the searched window wins.
        assert_eq!(
            find_stop_string("a END b END", 4, &stops, false),
            Some(("END".into(), 8))
        );
    }

    #[test]
    fn visible_holds_back_partial_stop() {
        let stops = vec!["STOP".to_string()];
        assert_eq!(visible_len("hello ST", &stops, false), 5);
        assert_eq!(visible_len("hello ST", &stops, true), 8);
        assert_eq!(visible_len("héé", &["abc".into()], false), 3);
    }
}
