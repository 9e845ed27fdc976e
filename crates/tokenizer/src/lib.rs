//! Tokenizer built from GGUF tokenizer metadata.
//!
//! * [`Tokenizer`]: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) whose
//!   ids match llama.cpp's tokenizer for the same GGUF file. The pipeline
//!   follows llama.cpp: special tokens written in the text are split out
//!   first (control / unknown / user-defined tokens, longest first, as with
//!   `parse_special = true`), the rest is split into words with the regexes
//!   of the `tokenizer.ggml.pre` type (see `pretok`), and each word is
//!   byte-level encoded and merged with the BPE model of the HF
//!   `tokenizers` crate. Decoding maps tokens back through the byte-level
//!   alphabet (the HF `ByteLevel` decoder's table); special tokens decode to
//!   their text.
//! * [`IncrementalDetokenizer`]: streaming decode that never splits a UTF-8
//!   character.
//! * [`Tokenizer::apply_chat_template`]: renders `tokenizer.chat_template`.
//!
//! The crate does not read GGUF files itself: callers fill a
//! [`TokenizerSpec`] from the metadata.

mod bytelevel;
mod chat;
mod detok;
mod pretok;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::Model;

pub use chat::ChatMessage;
pub use detok::IncrementalDetokenizer;

/// GGUF `tokenizer.ggml.token_type` values.
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Tokenizer description as found in GGUF metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: `"smollm"`, `"llama-bpe"`, `"qwen2"`, `"gpt-2"`,
    /// `"default"`, ... `None` means `"default"`, as in llama.cpp.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, same length as `tokens` (empty = all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, `"left right"`, highest priority first.
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Errors from building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\")")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer type {0:?}")]
    UnsupportedPreTokenizer(String),
    #[error("invalid tokenizer spec: {0}")]
    InvalidSpec(String),
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    InvalidTokenId { id: u32, vocab_size: usize },
    #[error("the model has no chat template")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer backend: {0}")]
    Backend(String),
}

/// A tokenizer for one model. `Send + Sync`; share it through an `Arc`.
pub struct Tokenizer {
    /// BPE merges (HF `tokenizers` model), on byte-level encoded words.
    bpe: BPE,
    pre: pretok::PreTokenizer,
    /// Tokens matched verbatim in the input before pre-tokenization,
    /// longest first (llama.cpp's order).
    specials: Vec<(String, u32)>,
    /// Id of [`UNK_SENTINEL`] in the BPE model (= vocab size); removed from
    /// encoder output.
    unk_sentinel: u32,
    tokens: Vec<String>,
    /// Control and unknown tokens (dropped by `skip_special_tokens`).
    special: Vec<bool>,
    /// Decoded bytes of every token, concatenated; token `i` is
    /// `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    token_to_id: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat: Option<Result<chat::ChatTemplate, String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("has_chat_template", &self.chat.is_some())
            .finish_non_exhaustive()
    }
}

/// Text of the BPE model's internal unknown-character token.
const UNK_SENTINEL: &str = "\u{FFFF}rvllm-unk";

/// Splits a GGUF merge line `"left right"`. Like llama.cpp, the separator is
/// the first space after the first character.
fn split_merge(line: &str) -> Option<(&str, &str)> {
    let first_len = line.chars().next()?.len_utf8();
    let pos = line[first_len..].find(' ')? + first_len;
    Some((&line[..pos], &line[pos + 1..]))
}

impl Tokenizer {
    /// Builds the tokenizer. Fails on an unsupported model or pre-tokenizer
    /// type or inconsistent metadata. A chat template that does not compile
    /// is not an error here; [`apply_chat_template`](Self::apply_chat_template)
    /// reports it.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(spec.model));
        }
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::InvalidSpec("no tokens".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::InvalidSpec(format!(
                "{n} tokens is too many"
            )));
        }
        let types = if spec.token_types.is_empty() {
            vec![token_type::NORMAL; n]
        } else if spec.token_types.len() == n {
            spec.token_types
        } else {
            return Err(TokenizerError::InvalidSpec(format!(
                "{} token types for {n} tokens",
                spec.token_types.len()
            )));
        };
        let pre = pretok::lookup(spec.pre.as_deref()).ok_or_else(|| {
            TokenizerError::UnsupportedPreTokenizer(spec.pre.clone().unwrap_or_default())
        })?;

        // Special ids outside the vocabulary are ignored, as llama.cpp does.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let (bos, eos) = (in_range(spec.bos_token_id), in_range(spec.eos_token_id));
        let (unk, pad) = (in_range(spec.unk_token_id), in_range(spec.pad_token_id));
        if spec.add_bos && bos.is_none() {
            return Err(TokenizerError::InvalidSpec(
                "add_bos is set but there is no BOS token".into(),
            ));
        }
        if spec.add_eos && eos.is_none() {
            return Err(TokenizerError::InvalidSpec(
                "add_eos is set but there is no EOS token".into(),
            ));
        }

        // Vocabulary (a repeated token text maps to its last id, as in llama.cpp).
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in spec.tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }
        // A character without a token (a vocabulary may lack some byte
        // tokens) becomes this sentinel inside BPE, so that, as in llama.cpp,
        // it separates its neighbours (no merge across it) and is then
        // dropped. Its text contains U+FFFF, which byte-level text never
        // does, and no merge mentions it.
        let unk_sentinel = n as u32;
        let mut vocab: Vocab = token_to_id.iter().map(|(k, &v)| (k.clone(), v)).collect();
        vocab.insert(UNK_SENTINEL.to_string(), unk_sentinel);

        // Merges: keep the first rank of a repeated pair; drop pairs whose
        // parts or result are not tokens (the HF model requires them).
        let mut merges: Merges = Vec::with_capacity(spec.merges.len());
        let mut seen: std::collections::HashSet<(&str, &str)> =
            std::collections::HashSet::with_capacity(spec.merges.len());
        for line in &spec.merges {
            let Some((a, b)) = split_merge(line) else {
                continue;
            };
            if !token_to_id.contains_key(a)
                || !token_to_id.contains_key(b)
                || !token_to_id.contains_key(&format!("{a}{b}"))
                || !seen.insert((a, b))
            {
                continue;
            }
            merges.push((a.to_string(), b.to_string()));
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .unk_token(UNK_SENTINEL.to_string())
            .build()
            .map_err(|e| TokenizerError::Backend(format!("BPE model: {e}")))?;
        let pre_tokenizer = pretok::PreTokenizer::new(&pre)?;

        // Tokens matched verbatim in the input before BPE. llama.cpp matches
        // control, unknown and user-defined tokens (with parse_special),
        // longest text first.
        let mut specials: Vec<(String, u32)> = spec
            .tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (t, &ty))| {
                !t.is_empty()
                    && matches!(
                        ty,
                        token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
                    )
            })
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        // Per-token bytes for decoding (what llama.cpp's token_to_piece
        // gives): normal tokens through the byte-level alphabet, control /
        // unknown / user-defined tokens verbatim, other types empty.
        let mut bytes = Vec::with_capacity(n * 6);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut special = Vec::with_capacity(n);
        offsets.push(0);
        for (t, &ty) in spec.tokens.iter().zip(&types) {
            match ty {
                token_type::NORMAL => bytelevel::decode_token(t, &mut bytes),
                token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED => {
                    bytes.extend_from_slice(t.as_bytes())
                }
                _ => {}
            }
            offsets.push(bytes.len());
            special.push(matches!(ty, token_type::CONTROL | token_type::UNKNOWN));
        }

        let chat = spec
            .chat_template
            .as_deref()
            .map(|src| chat::ChatTemplate::new(src).map_err(|e| e.to_string()));

        Ok(Tokenizer {
            bpe,
            pre: pre_tokenizer,
            specials,
            unk_sentinel,
            tokens: spec.tokens,
            special,
            bytes,
            offsets,
            token_to_id,
            bos,
            eos,
            unk,
            pad,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            chat,
        })
    }

    /// Encodes `text`. With `add_special_tokens`, BOS / EOS are added as the
    /// model's `add_bos` / `add_eos` say. Special tokens written in the text
    /// (e.g. `"<|im_start|>"`) are encoded as those tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens && self.add_bos {
            ids.extend(self.bos);
        }
        let mut word = String::new();
        for frag in self.partition_special(text) {
            let piece_text = match frag {
                Fragment::Token(id) => {
                    ids.push(id);
                    continue;
                }
                Fragment::Text(s) => s,
            };
            for piece in self.pre.split(piece_text) {
                word.clear();
                bytelevel::encode_into(piece, &mut word);
                let toks = self
                    .bpe
                    .tokenize(&word)
                    .map_err(|e| TokenizerError::Backend(e.to_string()))?;
                ids.extend(
                    toks.iter()
                        .map(|t| t.id)
                        .filter(|&id| id != self.unk_sentinel),
                );
            }
        }
        if add_special_tokens && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Splits `text` at special tokens the way llama.cpp's
    /// `tokenizer_st_partition` does: for each special token, longest first,
    /// every remaining text fragment is split at its occurrences.
    fn partition_special<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        let mut next = Vec::new();
        for (tok, id) in &self.specials {
            let tok = tok.as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(s) if s.contains(tok)))
            {
                continue;
            }
            next.clear();
            for f in &frags {
                let s = match *f {
                    Fragment::Text(s) => s,
                    Fragment::Token(_) => {
                        next.push(*f);
                        continue;
                    }
                };
                let mut last = 0usize;
                for (at, _) in s.match_indices(tok) {
                    if at > last {
                        next.push(Fragment::Text(&s[last..at]));
                    }
                    next.push(Fragment::Token(*id));
                    last = at + tok.len();
                }
                if last < s.len() {
                    next.push(Fragment::Text(&s[last..]));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// Decodes ids to text. With `skip_special_tokens`, control (and
    /// unknown) tokens are dropped; otherwise their text is included.
    /// Invalid UTF-8 (e.g. a character cut in half) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let b = self.token_bytes(id).ok_or(TokenizerError::InvalidTokenId {
                id,
                vocab_size: self.tokens.len(),
            })?;
            if skip_special_tokens && self.is_special(id) {
                continue;
            }
            out.extend_from_slice(b);
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The raw bytes token `id` decodes to (`None` if out of range).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.bytes.get(start..end)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk_token_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., true)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Id of the token whose (byte-level encoded) text is `s`.
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    /// The token's vocabulary text (byte-level encoded, e.g. `"Ġthe"`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// True for control and unknown tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Renders the model's chat template for `messages`. The template sees
    /// `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, and
    /// can call `raise_exception(msg)` and `strftime_now(fmt)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = match &self.chat {
            None => return Err(TokenizerError::NoChatTemplate),
            Some(Err(e)) => return Err(TokenizerError::Template(e.clone())),
            Some(Ok(t)) => t,
        };
        let text_of = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or("");
        tmpl.render(
            messages,
            add_generation_prompt,
            text_of(self.bos),
            text_of(self.eos),
        )
    }
}

/// A piece of input: plain text or a special token found in it.
#[derive(Debug, Clone, Copy)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[cfg(test)]
mod tests;
