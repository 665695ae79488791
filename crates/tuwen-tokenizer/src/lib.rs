//! BERT WordPiece tokenization for tuwen's vision-language models.
//!
//! Built on the [`tokenizers`] crate (the Rust core of HF tokenizers), so ids are bit-identical
//! to `BertTokenizerFast`. What this crate adds:
//!
//! * loading from a BERT `vocab.txt` or a `tokenizer.json`, with padding and truncation controlled
//!   by [`TokenizerOptions`], never by whatever the file carries;
//! * training a new WordPiece vocabulary from a caption corpus ([`BertTokenizer::train`]);
//! * single texts and text pairs with `[CLS]`/`[SEP]` and token-type ids ([`Encoded`]);
//! * batching to padded Burn tensors ([`TextBatch`]) and decoding ids back to text.
//!
//! ```no_run
//! use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};
//! # fn main() -> Result<(), tuwen_tokenizer::TokenizerError> {
//! let tok = BertTokenizer::from_vocab("vocab.txt", TokenizerOptions::default())?;
//! let enc = tok.encode("A man is riding a horse on the beach.")?;
//! assert_eq!(enc.ids.first(), Some(&tok.special_tokens().cls));
//! let text = tok.decode(&enc.ids, true)?;
//! # let _ = text; Ok(()) }
//! ```

mod batch;
mod error;
mod tokenizer;
mod train;

pub use batch::TextBatch;
pub use error::TokenizerError;
pub use tokenizer::{BertTokenizer, Encoded, Padding, SpecialTokens, TokenizerOptions};
pub use train::TrainOptions;
