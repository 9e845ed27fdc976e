//! Tokenizer from GGUF metadata. (Being written.)
