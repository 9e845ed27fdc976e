//! Unit tests on a tiny synthetic byte-level vocabulary (no model file needed).

use super::*;
use crate::bytelevel::byte_to_char;

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "ð Ł", "ĺ Ģ", "1 2",
];

fn spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![
        token_type::CONTROL,
        token_type::CONTROL,
        token_type::CONTROL,
        token_type::USER_DEFINED,
    ];
    for b in 0..=255u8 {
        tokens.push(byte_to_char(b).to_string());
        types.push(token_type::NORMAL);
    }
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(token_type::NORMAL);
    }
    tokens.push("[PAD0]".into());
    types.push(token_type::UNUSED);
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types: types,
        merges: MERGES.iter().map(|s| s.to_string()).collect(),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unk_token_id: Some(0),
        pad_token_id: Some(2),
        add_bos: false,
        add_eos: false,
        chat_template: Some(CHATML.into()),
    }
}

fn tok() -> Tokenizer {
    match Tokenizer::from_spec(spec()) {
        Ok(t) => t,
        Err(e) => panic!("from_spec: {e}"),
    }
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    match t.token_to_id(s) {
        Some(i) => i,
        None => panic!("no token {s:?}"),
    }
}

fn enc(t: &Tokenizer, s: &str) -> Vec<u32> {
    match t.encode(s, false) {
        Ok(v) => v,
        Err(e) => panic!("encode {s:?}: {e}"),
    }
}

fn dec(t: &Tokenizer, ids: &[u32], skip: bool) -> String {
    match t.decode(ids, skip) {
        Ok(v) => v,
        Err(e) => panic!("decode {ids:?}: {e}"),
    }
}

#[test]
fn send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<IncrementalDetokenizer>();
}

#[test]
fn basic_bpe() {
    let t = tok();
    assert_eq!(t.vocab_size(), 4 + 256 + MERGES.len() + 1);
    assert_eq!(
        enc(&t, "hello world"),
        vec![id(&t, "hello"), id(&t, "Ġwor"), id(&t, "ld")]
    );
    // Digits are split one by one before BPE, so the "1 2" merge never applies.
    assert_eq!(enc(&t, "12"), vec![id(&t, "1"), id(&t, "2")]);
    assert_eq!(enc(&t, ""), Vec::<u32>::new());
    assert_eq!(t.id_to_token(id(&t, "hello")), Some("hello"));
    assert_eq!(t.id_to_token(100_000), None);
}

#[test]
fn special_tokens_in_text() {
    let t = tok();
    let ids = enc(&t, "<|im_start|>hello<|im_end|>");
    assert_eq!(ids, vec![1, id(&t, "hello"), 2]);
    // user-defined tokens are matched too
    assert_eq!(enc(&t, "<tool>"), vec![3]);
    // not a special token: spelled out byte by byte
    assert!(enc(&t, "<|im_sta").len() > 1);
    assert!(t.is_special(1) && t.is_special(0) && !t.is_special(3));
    assert!(!t.is_special(id(&t, "hello")));
}

#[test]
fn chars_without_tokens_are_dropped_and_block_merges() {
    // Remove the token for byte 0x16: llama.cpp drops such characters, and
    // "he" must not merge across the gap.
    let mut s = spec();
    let gap = byte_to_char(0x16).to_string();
    let Some(pos) = s.tokens.iter().position(|t| *t == gap) else {
        panic!("no byte token");
    };
    s.tokens[pos] = "[removed]".into();
    s.token_types[pos] = token_type::UNUSED;
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(enc(&t, "h\u{16}e"), vec![id(&t, "h"), id(&t, "e")]);
    assert_eq!(enc(&t, "he"), vec![id(&t, "he")]);
    assert_eq!(enc(&t, "\u{16}"), Vec::<u32>::new());
}

#[test]
fn bos_eos() {
    let mut s = spec();
    s.add_bos = true;
    s.add_eos = true;
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        t.encode("hello", true).ok(),
        Some(vec![1, id(&t, "hello"), 2])
    );
    assert_eq!(t.encode("hello", false).ok(), Some(vec![id(&t, "hello")]));
    assert_eq!(t.encode("", true).ok(), Some(vec![1, 2]));
    assert_eq!(
        tok().encode("hello", true).ok(),
        Some(vec![id(&t, "hello")])
    );
}

#[test]
fn decode_roundtrip_and_skip_special() {
    let t = tok();
    for s in [
        "hello world",
        "héllo\t\n  wörld 😀 日本 12345",
        "",
        "  ",
        "<tool> x",
    ] {
        assert_eq!(dec(&t, &enc(&t, s), false), s);
    }
    let ids = enc(&t, "<|im_start|>hello<|im_end|><tool>");
    assert_eq!(dec(&t, &ids, false), "<|im_start|>hello<|im_end|><tool>");
    assert_eq!(dec(&t, &ids, true), "hello<tool>");
    // unused tokens decode to nothing (llama.cpp token_to_piece)
    assert_eq!(dec(&t, &[id(&t, "[PAD0]")], false), "");
    assert!(matches!(
        t.decode(&[9999], false),
        Err(TokenizerError::InvalidTokenId { id: 9999, .. })
    ));
    // half an emoji
    assert_eq!(dec(&t, &[id(&t, "ðŁ")], false), "\u{FFFD}");
}

#[test]
fn hf_byte_level_decoder_agrees_on_normal_tokens() {
    use tokenizers::Decoder;
    let t = tok();
    let ids = enc(&t, "héllo wörld 😀 日本");
    let toks: Vec<String> = ids
        .iter()
        .filter_map(|&i| t.id_to_token(i).map(str::to_string))
        .collect();
    let hf = tokenizers::decoders::byte_level::ByteLevel::default().decode(toks);
    assert_eq!(hf.ok(), Some(dec(&t, &ids, false)));
}

#[test]
fn longer_special_tokens_win() {
    // llama.cpp matches special tokens longest first.
    let mut s = spec();
    s.tokens.push("<|im".into());
    s.token_types.push(token_type::CONTROL);
    s.tokens.push("end|>x".into());
    s.token_types.push(token_type::USER_DEFINED);
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let (im, endx) = (id(&t, "<|im"), id(&t, "end|>x"));
    assert_eq!(enc(&t, "<|im_end|>"), vec![2]);
    // "<|im_end|>x": "<|im_end|>" (10 bytes) is tried before "end|>x" (6).
    assert_eq!(enc(&t, "<|im_end|>x"), vec![2, id(&t, "x")]);
    assert_eq!(enc(&t, "<|imend|>x"), vec![im, endx]);
}

#[test]
fn incremental_never_splits_chars() {
    let t = tok();
    let text = "hello 😀 world 日本語!";
    let ids = enc(&t, text);
    let emoji_first = id(&t, "ðŁ");
    assert!(ids.contains(&emoji_first));
    let mut d = IncrementalDetokenizer::new(true);
    let mut pieces = Vec::new();
    for &i in &ids {
        let piece = d.push(&t, i);
        if i == emoji_first {
            assert_eq!(piece, "", "half an emoji must be held back");
            assert_eq!(d.pending_bytes(), 2);
        }
        pieces.push(piece);
    }
    assert_eq!(pieces.concat(), text);
    assert_eq!(d.text(), text);
    assert_eq!(d.finish(), "");
}

#[test]
fn incremental_special_tokens() {
    let t = tok();
    let ids = enc(&t, "hello<|im_end|>");
    let mut keep = IncrementalDetokenizer::new(false);
    let mut skip = IncrementalDetokenizer::new(true);
    for &i in &ids {
        keep.push(&t, i);
        skip.push(&t, i);
    }
    assert_eq!(keep.text(), "hello<|im_end|>");
    assert_eq!(skip.text(), "hello");
    // unknown ids contribute nothing
    assert_eq!(skip.push(&t, 1_000_000), "");
}

#[test]
fn incremental_flushes_and_matches_lossy_decode() {
    let t = tok();
    let half = id(&t, "ðŁ");
    let ids = [half, id(&t, "h"), half];
    let mut d = IncrementalDetokenizer::new(false);
    let mut out = d.push_all(&t, &ids);
    assert_eq!(out, "\u{FFFD}h");
    out.push_str(&d.finish());
    assert_eq!(out, dec(&t, &ids, false));
    assert_eq!(d.text(), out);
}

#[test]
fn incremental_continues_prompt_char() {
    let t = tok();
    let prompt = [id(&t, "hello"), id(&t, "ðŁ")];
    let mut d = IncrementalDetokenizer::with_prompt(&t, &prompt, true);
    assert_eq!(d.pending_bytes(), 2);
    assert_eq!(d.push(&t, id(&t, "ĺĢ")), "😀");
    let d2 = IncrementalDetokenizer::with_prompt(&t, &[id(&t, "hello")], true);
    assert_eq!(d2.pending_bytes(), 0);
}

#[test]
fn chat_template_chatml() {
    let t = tok();
    let msgs = vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi there"),
    ];
    let s = match t.apply_chat_template(&msgs, true) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        s,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    let s = match t.apply_chat_template(&msgs[1..], false) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    );
}

#[test]
fn chat_template_errors() {
    let mut s = spec();
    s.chat_template = None;
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert!(!t.has_chat_template());
    assert!(matches!(
        t.apply_chat_template(&[], true),
        Err(TokenizerError::NoChatTemplate)
    ));

    let mut s = spec();
    s.chat_template = Some("{{ bos_token }}{% if x %}".into());
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("a bad template must not fail from_spec: {e}"),
    };
    assert!(matches!(
        t.apply_chat_template(&[], true),
        Err(TokenizerError::Template(_))
    ));

    let mut s = spec();
    s.chat_template = Some("{{ bos_token }}|{{ eos_token }}".into());
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        t.apply_chat_template(&[], false).ok().as_deref(),
        Some("<|im_start|>|<|im_end|>")
    );
}

#[test]
fn spec_errors() {
    let mut s = spec();
    s.model = "bert".into();
    assert!(matches!(
        Tokenizer::from_spec(s),
        Err(TokenizerError::UnsupportedModel(_))
    ));
    let mut s = spec();
    s.pre = Some("klingon".into());
    assert!(matches!(
        Tokenizer::from_spec(s),
        Err(TokenizerError::UnsupportedPreTokenizer(_))
    ));
    let mut s = spec();
    s.token_types.pop();
    assert!(matches!(
        Tokenizer::from_spec(s),
        Err(TokenizerError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.bos_token_id = Some(1_000_000);
    s.add_bos = true;
    assert!(matches!(
        Tokenizer::from_spec(s),
        Err(TokenizerError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.tokens.clear();
    s.token_types.clear();
    assert!(Tokenizer::from_spec(s).is_err());
    // bad merge lines are skipped, not fatal
    let mut s = spec();
    s.merges.push("nospace".into());
    s.merges.push("x y".into()); // "xy" is not a token
    s.merges.push("".into());
    assert!(Tokenizer::from_spec(s).is_ok());
}

#[test]
fn spec_deserializes_from_json() {
    let json = r#"{"model":"gpt2","pre":"gpt-2","tokens":["a","b","ab"],"merges":["a b"],"bos_token_id":0}"#;
    let s: TokenizerSpec = match serde_json::from_str(json) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(s.bos_token_id, Some(0));
    assert!(s.token_types.is_empty() && !s.add_bos && s.chat_template.is_none());
    let t = match Tokenizer::from_spec(s) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(t.encode("ab", false).ok(), Some(vec![2]));
}

#[test]
fn split_merge_cases() {
    assert_eq!(split_merge("a b"), Some(("a", "b")));
    assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
    assert_eq!(split_merge("  x"), Some((" ", "x")));
    assert_eq!(split_merge("ab"), None);
    assert_eq!(split_merge(""), None);
}
