//! The engine's view of the tokenizer.

use rvllm_engine::{DecodeStream, TextCodec};
use rvllm_tokenizer::{IncrementalDetokenizer, Tokenizer};
use std::sync::Arc;

pub struct TokenizerCodec(pub Arc<Tokenizer>);

struct Stream {
    tok: Arc<Tokenizer>,
    inner: IncrementalDetokenizer,
}

impl DecodeStream for Stream {
    fn push(&mut self, id: u32) -> String {
        self.inner.push(&self.tok, id)
    }
}

impl TextCodec for TokenizerCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.0
            .encode(text, add_special_tokens)
            .map_err(|e| e.to_string())
    }
    fn decode_stream(&self, skip_special_tokens: bool) -> Box<dyn DecodeStream> {
        Box::new(Stream {
            tok: self.0.clone(),
            inner: IncrementalDetokenizer::new(skip_special_tokens),
        })
    }
    fn token_text(&self, id: u32) -> String {
        self.0.decode(&[id], false).unwrap_or_default()
    }
    fn eos_token_id(&self) -> Option<u32> {
        self.0.eos_token_id()
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
}

/// For models run without a tokenizer (`skip_tokenizer_init`): prompts must be token ids and
/// outputs carry ids only.
pub struct NoTokenizer {
    pub vocab_size: usize,
    pub eos: Option<u32>,
}

struct NoText;

impl DecodeStream for NoText {
    fn push(&mut self, _id: u32) -> String {
        String::new()
    }
}

impl TextCodec for NoTokenizer {
    fn encode(&self, _text: &str, _add: bool) -> Result<Vec<u32>, String> {
        Err("this model was loaded without a tokenizer (skip_tokenizer_init): pass prompts as token ids".into())
    }
    fn decode_stream(&self, _skip: bool) -> Box<dyn DecodeStream> {
        Box::new(NoText)
    }
    fn token_text(&self, _id: u32) -> String {
        String::new()
    }
    fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}
