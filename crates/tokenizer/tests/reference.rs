//! Compares the tokenizer with llama.cpp on the committed corpus
//! `tests/reference/tokenizer_corpus.json` (made by
//! `scripts/make_tokenizer_reference.py`).
//!
//! The tokenizer metadata of the GGUF file is read from the JSON dump named
//! by `RVLLM_TOKENIZER_SPEC_JSON`
//! (`python3 scripts/make_tokenizer_reference.py --dump-spec /tmp/spec.json`);
//! without it these tests are skipped.

use std::sync::OnceLock;

use rvllm_tokenizer::{ChatMessage, IncrementalDetokenizer, Tokenizer, TokenizerSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    text: String,
    ids: Vec<u32>,
    detokenize: String,
    detokenize_special: String,
}

#[derive(Deserialize)]
struct WithBos {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct FeatureCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Reference {
    corpus: Vec<Entry>,
    with_bos: Vec<WithBos>,
    chat: Vec<ChatCase>,
    #[serde(default)]
    feature_template: String,
    #[serde(default)]
    feature_chat: Vec<FeatureCase>,
}

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/reference/tokenizer_corpus.json"
);

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        // RVLLM_TOKENIZER_CORPUS may point at another file of the same shape
        // (e.g. `make_tokenizer_reference.py --fuzz N --out /tmp/fuzz.json`).
        let path = std::env::var("RVLLM_TOKENIZER_CORPUS").unwrap_or_else(|_| CORPUS.to_string());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => panic!("reading {path}: {e}"),
        };
        match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => panic!("parsing {path}: {e}"),
        }
    })
}

fn spec() -> Option<&'static TokenizerSpec> {
    static S: OnceLock<Option<TokenizerSpec>> = OnceLock::new();
    S.get_or_init(|| {
        let path = std::env::var("RVLLM_TOKENIZER_SPEC_JSON").ok()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => panic!("reading {path}: {e}"),
        };
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => panic!("parsing {path}: {e}"),
        }
    })
    .as_ref()
}

fn tokenizer() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let spec = spec()?.clone();
        match Tokenizer::from_spec(spec) {
            Ok(t) => Some(t),
            Err(e) => panic!("from_spec: {e}"),
        }
    })
    .as_ref()
}

macro_rules! tok_or_skip {
    () => {
        match tokenizer() {
            Some(t) => t,
            None => {
                eprintln!("RVLLM_TOKENIZER_SPEC_JSON not set; skipping");
                return;
            }
        }
    };
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

#[test]
fn corpus_is_large_enough() {
    if std::env::var_os("RVLLM_TOKENIZER_CORPUS").is_some() {
        return;
    }
    let r = reference();
    assert!(r.corpus.len() >= 200, "{} strings", r.corpus.len());
    assert!(r.corpus.iter().any(|e| e.text.is_empty()));
    assert!(r.corpus.iter().any(|e| e.text.len() > 10_000));
}

#[test]
fn ids_match_llama_cpp() {
    let t = tok_or_skip!();
    let r = reference();
    let mut mismatches = Vec::new();
    for e in &r.corpus {
        let got = match t.encode(&e.text, false) {
            Ok(v) => v,
            Err(err) => panic!("encode {}: {err}", short(&e.text)),
        };
        if got != e.ids {
            mismatches.push(format!(
                "{}\n  llama.cpp: {:?}\n  rvllm:     {:?}",
                short(&e.text),
                &e.ids[..e.ids.len().min(24)],
                &got[..got.len().min(24)]
            ));
        }
    }
    let same = r.corpus.len() - mismatches.len();
    eprintln!("ids identical to llama.cpp: {same}/{}", r.corpus.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        r.corpus.len(),
        mismatches.join("\n")
    );
}

#[test]
fn add_special_tokens_matches_llama_cpp() {
    let t = tok_or_skip!();
    for c in &reference().with_bos {
        assert_eq!(
            t.encode(&c.text, true).ok().as_ref(),
            Some(&c.ids),
            "{}",
            short(&c.text)
        );
    }
}

#[test]
fn decode_matches_llama_cpp_and_round_trips() {
    let t = tok_or_skip!();
    for e in &reference().corpus {
        let plain = t.decode(&e.ids, true).ok();
        let special = t.decode(&e.ids, false).ok();
        assert_eq!(
            plain.as_deref(),
            Some(e.detokenize.as_str()),
            "{}",
            short(&e.text)
        );
        assert_eq!(
            special.as_deref(),
            Some(e.detokenize_special.as_str()),
            "{}",
            short(&e.text)
        );
        // Round trip. llama.cpp's round trip is the text itself except for
        // characters the vocabulary cannot represent (missing byte tokens),
        // which both drop.
        let ids = t.encode(&e.text, false).ok().unwrap_or_default();
        let back = t.decode(&ids, false).ok();
        assert_eq!(
            back.as_deref(),
            Some(e.detokenize_special.as_str()),
            "{}",
            short(&e.text)
        );
    }
}

#[test]
fn incremental_equals_full_decode() {
    let t = tok_or_skip!();
    let mut held_back = 0usize;
    for e in &reference().corpus {
        for skip in [false, true] {
            let mut d = IncrementalDetokenizer::new(skip);
            let mut joined = String::new();
            for &id in &e.ids {
                let piece = d.push(t, id);
                if piece.is_empty() && d.pending_bytes() > 0 {
                    held_back += 1;
                }
                joined.push_str(&piece);
            }
            assert_eq!(d.pending_bytes(), 0, "{}", short(&e.text));
            assert_eq!(d.finish(), "");
            let full = t.decode(&e.ids, skip).ok();
            assert_eq!(Some(joined.as_str()), full.as_deref(), "{}", short(&e.text));
            assert_eq!(Some(d.text()), full.as_deref());
        }
    }
    // The corpus has emoji / CJK split over several tokens.
    assert!(held_back > 0);
    eprintln!("tokens held back as partial UTF-8: {held_back}");
}

#[test]
fn incremental_from_prompt_split_mid_char() {
    let t = tok_or_skip!();
    // Find a corpus entry where a token boundary falls inside a character,
    // use the tokens before it as the prompt and the rest as output.
    let mut tested = 0;
    for e in &reference().corpus {
        for cut in 1..e.ids.len() {
            let prefix = t.decode(&e.ids[..cut], false).ok().unwrap_or_default();
            if !prefix.ends_with('\u{FFFD}') || e.text.contains('\u{FFFD}') {
                continue;
            }
            let mut d = IncrementalDetokenizer::with_prompt(t, &e.ids[..cut], false);
            assert!(d.pending_bytes() > 0);
            let out = d.push_all(t, &e.ids[cut..]);
            let whole = t.decode(&e.ids, false).ok().unwrap_or_default();
            let clean_prefix = prefix.trim_end_matches('\u{FFFD}');
            assert_eq!(format!("{clean_prefix}{out}"), whole, "{}", short(&e.text));
            tested += 1;
            break;
        }
    }
    assert!(tested > 0);
}

#[test]
fn chat_template_matches_jinja2() {
    let t = tok_or_skip!();
    let r = reference();
    assert!(!r.chat.is_empty());
    for c in &r.chat {
        let got = match t.apply_chat_template(&c.messages, c.add_generation_prompt) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(got, c.rendered);
    }
    // ChatML with a generation prompt, spelled out.
    let msgs = [
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Hello!"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, true).ok().as_deref(),
        Some(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
        )
    );
}

#[test]
fn feature_template_matches_jinja2() {
    let Some(spec) = spec() else {
        eprintln!("RVLLM_TOKENIZER_SPEC_JSON not set; skipping");
        return;
    };
    let r = reference();
    let mut spec = spec.clone();
    spec.chat_template = Some(r.feature_template.clone());
    let t = match Tokenizer::from_spec(spec) {
        Ok(t) => t,
        Err(e) => panic!("from_spec: {e}"),
    };
    if std::env::var_os("RVLLM_TOKENIZER_CORPUS").is_none() {
        assert!(!r.feature_chat.is_empty());
    }
    for c in &r.feature_chat {
        let got = t.apply_chat_template(&c.messages, c.add_generation_prompt);
        match (&c.rendered, &c.error, got) {
            (Some(want), _, Ok(got)) => assert_eq!(&got, want),
            (None, Some(msg), Err(e)) => {
                assert!(e.to_string().contains(msg.as_str()), "{e} vs {msg}")
            }
            (_, _, got) => panic!("jinja2: {:?}/{:?}, rvllm: {got:?}", c.rendered, c.error),
        }
    }
}
