//! Training a WordPiece vocabulary from a caption corpus (for models trained from scratch).

use tokenizers::models::TrainerWrapper;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::tokenizer::SPECIAL_TOKENS;
use crate::{BertTokenizer, TokenizerError, TokenizerOptions};

/// Options for [`BertTokenizer::train`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainOptions {
    /// Target vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge.
    pub min_frequency: u64,
    /// Keep at most this many distinct initial characters (`None`: all).
    pub limit_alphabet: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 30_522,
            min_frequency: 2,
            limit_alphabet: Some(1_000),
        }
    }
}

impl BertTokenizer {
    /// Trains a BERT WordPiece vocabulary on `corpus` (one caption per item).
    ///
    /// The special tokens get ids 0..5 in the order `[PAD] [UNK] [CLS] [SEP] [MASK]`; the
    /// normaliser is BERT's (lowercasing per `options.lowercase`).
    pub fn train<I, S>(
        corpus: I,
        train: &TrainOptions,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let model = WordPiece::builder()
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(
                true,
                true,
                None,
                options.lowercase,
            )))
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));

        let mut builder = WordPieceTrainer::builder()
            .vocab_size(train.vocab_size)
            .min_frequency(train.min_frequency)
            .show_progress(false)
            .continuing_subword_prefix("##".into())
            .special_tokens(
                SPECIAL_TOKENS
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            );
        if let Some(limit) = train.limit_alphabet {
            builder = builder.limit_alphabet(limit);
        }
        let mut trainer = TrainerWrapper::WordPieceTrainer(builder.build());
        tokenizer
            .train(&mut trainer, corpus)
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Self::assemble(tokenizer, "trained vocabulary", options)
    }
}
