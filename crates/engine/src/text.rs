//! What the engine needs from a tokenizer, as a trait so the engine stays testable without one.

/// Text ↔ tokens for prompts and outputs.
pub trait TextCodec: Send + Sync {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String>;
    /// A per-sequence incremental decoder.
    fn decode_stream(&self, skip_special_tokens: bool) -> Box<dyn DecodeStream>;
    /// Text of one token, for logprob entries.
    fn token_text(&self, id: u32) -> String;
    fn eos_token_id(&self) -> Option<u32>;
    /// Token ids at or above this are invalid in prompts.
    fn vocab_size(&self) -> usize;
}

/// Turns a growing token sequence into text, returning only the newly completed characters
/// (never half a UTF-8 character).
pub trait DecodeStream: Send {
    fn push(&mut self, id: u32) -> String;
}
