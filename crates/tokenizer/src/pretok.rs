//! Pre-tokenization: splitting text into words before BPE, with the rules
//! llama.cpp uses for each `tokenizer.ggml.pre` type. The regexes are
//! applied one after another, each splitting every piece left by the
//! previous one; matches and the text between matches both become pieces.
//!
//! The GPT-2 family of patterns ends in `\s+(?!\S)|\s+`. The look-ahead is
//! not supported by the (fast, automaton based) `regex` crate, so the
//! patterns here end in `\s+` and [`Fixup::TrailingSpace`] applies the
//! look-ahead's effect afterwards: a run of two or more whitespace
//! characters followed by a non-space gives its last character to the next
//! piece (so `"  x"` splits as `" "`, `" x"`).

use regex::Regex;

use crate::TokenizerError;

/// GPT-2 (llama.cpp spells it without the final `|\s+`, but its hand
/// written matcher implements it).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Llama 3: case-insensitive contractions, digits in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Qwen2: like Llama 3 but digits one by one.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Post-processing of a match standing in for a regex look-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fixup {
    None,
    /// Pattern ends in `\s+` standing for `\s+(?!\S)|\s+`; no earlier
    /// alternative matches whitespace only.
    TrailingSpace,
    /// Same, but an earlier alternative `\s*[\r\n]+` takes whitespace runs
    /// that end in a newline (those are left alone).
    TrailingSpaceAfterNewlineRule,
}

/// One splitting regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub pattern: &'static str,
    pub fixup: Fixup,
}

const fn plain(pattern: &'static str) -> Rule {
    Rule {
        pattern,
        fixup: Fixup::None,
    }
}

const GPT2_RULE: Rule = Rule {
    pattern: GPT2,
    fixup: Fixup::TrailingSpace,
};
const LLAMA3_RULE: Rule = Rule {
    pattern: LLAMA3,
    fixup: Fixup::TrailingSpaceAfterNewlineRule,
};
const QWEN2_RULE: Rule = Rule {
    pattern: QWEN2,
    fixup: Fixup::TrailingSpaceAfterNewlineRule,
};

const DEFAULT_RULES: &[Rule] = &[
    plain(r"[\p{P}\$\+<=>\^~\|]+"),
    GPT2_RULE,
    plain(r"\p{N}+"),
    plain(r"[0-9][0-9][0-9]"),
];
const FALCON_RULES: &[Rule] = &[
    plain(r"[\p{P}\$\+<=>\^~\|`]+"),
    GPT2_RULE,
    plain(r"[0-9][0-9][0-9]"),
];
const SMOLLM_RULES: &[Rule] = &[plain(r"\p{N}"), GPT2_RULE];

/// How a pre-tokenizer type splits text, and BPE options that go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub rules: &'static [Rule],
    /// Whole pieces found in the vocabulary are emitted without merging
    /// (llama.cpp `ignore_merges`, set for Llama 3 style vocabularies).
    pub ignore_merges: bool,
}

const fn cfg(rules: &'static [Rule], ignore_merges: bool) -> PreConfig {
    PreConfig {
        rules,
        ignore_merges,
    }
}

/// Looks up the split rules for a `tokenizer.ggml.pre` value. `None` (key
/// absent) means llama.cpp's "default".
pub(crate) fn lookup(pre: Option<&str>) -> Option<PreConfig> {
    let name = pre.unwrap_or("default");
    let c = match name {
        "default" => cfg(DEFAULT_RULES, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" => {
            cfg(&[LLAMA3_RULE], true)
        }
        "dbrx" | "smaug-bpe" => cfg(&[LLAMA3_RULE], false),
        "falcon" => cfg(FALCON_RULES, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            cfg(SMOLLM_RULES, false)
        }
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe" | "jina-es"
        | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "gigachat"
        | "trillion" => cfg(&[GPT2_RULE], false),
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" | "hunyuan" => {
            cfg(&[QWEN2_RULE], false)
        }
        _ => return None,
    };
    Some(c)
}

/// llama.cpp classifies code points with its own tables, generated from
/// Unicode 15.1; code points assigned later are "undefined" there, i.e.
/// neither letters nor numbers nor punctuation. The `regex` crate's tables
/// are newer, so the general categories are pinned to Unicode 15.1.
fn pin_unicode_version(re: &str) -> String {
    re.replace(r"\p{L}", r"[\p{L}&&\p{Age=V15_1}]")
        .replace(r"\p{N}", r"[\p{N}&&\p{Age=V15_1}]")
        .replace(r"\p{P}", r"[\p{P}&&\p{Age=V15_1}]")
}

/// A compiled pre-tokenizer.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    steps: Vec<(Regex, Fixup)>,
}

impl PreTokenizer {
    pub(crate) fn new(config: &PreConfig) -> Result<Self, TokenizerError> {
        let steps = config
            .rules
            .iter()
            .map(|rule| {
                let re = Regex::new(&pin_unicode_version(rule.pattern)).map_err(|e| {
                    TokenizerError::Backend(format!("pre-tokenizer regex {:?}: {e}", rule.pattern))
                })?;
                Ok((re, rule.fixup))
            })
            .collect::<Result<Vec<_>, TokenizerError>>()?;
        Ok(Self { steps })
    }

    /// Splits `text` into pieces (their concatenation is `text`).
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        let mut next = Vec::new();
        for (re, fixup) in &self.steps {
            next.clear();
            for piece in &pieces {
                split_one(re, *fixup, piece, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }
}

/// Splits `text` at the matches of `re`, keeping matches and gaps.
fn split_one<'t>(re: &Regex, fixup: Fixup, text: &'t str, out: &mut Vec<&'t str>) {
    let mut last = 0usize; // end of the last emitted piece
    let mut pos = 0usize; // where to search next
    while pos < text.len() {
        let Some(m) = re.find_at(text, pos) else {
            break;
        };
        let (start, mut end) = (m.start(), m.end());
        if end == start {
            // Empty match: none of the patterns produce one, but step over
            // a character to be safe.
            pos = start + text[start..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        if end < text.len() && fixup != Fixup::None {
            let s = &text[start..end];
            let newline_rule = fixup == Fixup::TrailingSpaceAfterNewlineRule
                && (s.ends_with('\n') || s.ends_with('\r'));
            if !newline_rule && s.chars().all(char::is_whitespace) {
                if let Some(c) = s.chars().next_back() {
                    if s.len() > c.len_utf8() {
                        end -= c.len_utf8();
                    }
                }
            }
        }
        if start > last {
            out.push(&text[last..start]);
        }
        out.push(&text[start..end]);
        last = end;
        pos = end;
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let Some(c) = lookup(Some(pre)) else {
            panic!("unknown pre {pre}");
        };
        let p = match PreTokenizer::new(&c) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let out: Vec<String> = p.split(text).into_iter().map(str::to_string).collect();
        assert_eq!(out.concat(), text);
        out
    }

    #[test]
    fn all_regexes_compile() {
        for name in [
            "default",
            "llama-bpe",
            "dbrx",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
        ] {
            let Some(c) = lookup(Some(name)) else {
                panic!("{name}");
            };
            assert!(PreTokenizer::new(&c).is_ok(), "{name}");
        }
        assert!(lookup(Some("no-such-pre")).is_none());
        assert_eq!(lookup(None), lookup(Some("default")));
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        assert_eq!(
            pieces("smollm", "abc 12345 x"),
            vec!["abc", " ", "1", "2", "3", "4", "5", " x"]
        );
        assert_eq!(
            pieces("smollm", "it's  ok\n\n"),
            vec!["it", "'s", " ", " ok", "\n\n"]
        );
    }

    #[test]
    fn whitespace_lookahead_emulation() {
        // \s+(?!\S): a run followed by a non-space leaves its last char.
        assert_eq!(pieces("gpt-2", "a   b"), vec!["a", "  ", " b"]);
        assert_eq!(pieces("gpt-2", "a \tb"), vec!["a", " ", "\t", "b"]);
        assert_eq!(pieces("gpt-2", "a\tb"), vec!["a", "\t", "b"]);
        assert_eq!(pieces("gpt-2", "a  \n\nb"), vec!["a", "  \n", "\n", "b"]);
        assert_eq!(pieces("gpt-2", "a   "), vec!["a", "   "]);
        assert_eq!(pieces("gpt-2", "   "), vec!["   "]);
        assert_eq!(pieces("gpt-2", "  !"), vec![" ", " !"]);
        // llama3: newline runs go to \s*[\r\n]+ first.
        assert_eq!(
            pieces("llama-bpe", "a  \n\n  b"),
            vec!["a", "  \n\n", " ", " b"]
        );
        assert_eq!(pieces("llama-bpe", "a   b"), vec!["a", "  ", " b"]);
        assert_eq!(pieces("llama-bpe", "x\n"), vec!["x", "\n"]);
    }

    #[test]
    fn unicode_16_letters_are_not_letters() {
        // U+13460 (Egyptian Hieroglyphs Extended-A) is new in Unicode 16:
        // llama.cpp treats it like punctuation, so it takes the apostrophe.
        assert_eq!(pieces("smollm", "\u{13460}'s"), vec!["\u{13460}'", "s"]);
        // U+2EBF0 (CJK Extension I, Unicode 15.1) is a letter.
        assert_eq!(pieces("smollm", "\u{2EBF0}'s"), vec!["\u{2EBF0}", "'s"]);
        // U+16D70 (Kirat Rai digit, Unicode 16) is not split as a digit.
        assert_eq!(
            pieces("smollm", "\u{16D70}\u{16D71}"),
            vec!["\u{16D70}\u{16D71}"]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(pieces("llama-bpe", "1234567"), vec!["123", "456", "7"]);
        assert_eq!(pieces("llama-bpe", "IT'S"), vec!["IT", "'S"]);
    }

    #[test]
    fn default_pre_splits_punctuation_and_numbers() {
        assert_eq!(
            pieces("default", "a+b 12345"),
            vec!["a", "+", "b", " ", "123", "45"]
        );
    }
}
