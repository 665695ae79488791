use std::path::PathBuf;

/// Errors of the tokenizer crate. Each names the file or the input that caused it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A vocabulary or tokenizer file could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A special token the BERT format needs is absent from the vocabulary.
    #[error("vocabulary {source_name} has no {token} token")]
    MissingSpecialToken {
        /// Where the vocabulary came from.
        source_name: String,
        /// The missing token, e.g. `[MASK]`.
        token: &'static str,
    },
    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// An id outside the vocabulary was given to `decode`.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// Invalid options (for example a maximum length too small for `[CLS]` and `[SEP]`).
    #[error("invalid tokenizer options: {0}")]
    Options(String),
    /// Training a vocabulary failed.
    #[error("training a WordPiece vocabulary failed: {0}")]
    Train(String),
    /// Writing a vocabulary or tokenizer file failed.
    #[error("cannot write {path}: {reason}")]
    Save {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
