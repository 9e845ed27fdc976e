//! Zero-copy GGUF reader. (Being written; see the issue "Foundation".)
