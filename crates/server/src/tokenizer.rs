//! What the HTTP edge needs from a tokenizer (tokenize prompts, render chat templates, decode
//! for /detokenize and echo), as a trait so the server can be tested without a model.

use rvllm_tokenizer::{ChatMessage, Tokenizer};

pub trait ServerTokenizer: Send + Sync {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String>;
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String>;
    /// The vocabulary entry of a token (HF's `convert_ids_to_tokens`), e.g. `Ġthe`.
    fn token_str(&self, id: u32) -> Option<String>;
    /// Renders the model's chat template over `(role, content)` messages.
    fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, String>;
    fn vocab_size(&self) -> usize;
}

impl ServerTokenizer for Tokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        Tokenizer::encode(self, text, add_special_tokens).map_err(|e| e.to_string())
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        Tokenizer::decode(self, ids, skip_special_tokens).map_err(|e| e.to_string())
    }
    fn token_str(&self, id: u32) -> Option<String> {
        self.id_to_token(id).map(str::to_string)
    }
    fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|(r, c)| ChatMessage {
                role: r.clone(),
                content: c.clone(),
            })
            .collect();
        Tokenizer::apply_chat_template(self, &msgs, add_generation_prompt)
            .map_err(|e| e.to_string())
    }
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
}
