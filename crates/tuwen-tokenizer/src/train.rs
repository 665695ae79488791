//! Vocabularies for models trained from scratch: WordPiece training (the `tokenizers` trainer)
//! and a deterministic whole-word vocabulary for closed corpora.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use tokenizers::models::TrainerWrapper;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer,
};

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
    ///
    /// The `tokenizers` trainer breaks ties between equally frequent merges in hash order, so two
    /// trainings on the same corpus can give different vocabularies: save the result (see
    /// [`BertTokenizer::save_vocab`]) or use [`BertTokenizer::word_vocabulary`] when a run must
    /// be reproducible.
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

/// The BERT pre-tokenised words of `text` (normalised as [`BertTokenizer`] does).
fn bert_words(text: &str, lowercase: bool) -> Result<Vec<String>, TokenizerError> {
    let err = |e: tokenizers::Error| TokenizerError::Train(e.to_string());
    let mut normalized = NormalizedString::from(text);
    BertNormalizer::new(true, true, None, lowercase)
        .normalize(&mut normalized)
        .map_err(err)?;
    let mut pre = PreTokenizedString::from(normalized);
    BertPreTokenizer.pre_tokenize(&mut pre).map_err(err)?;
    Ok(pre
        .get_splits(OffsetReferential::Normalized, OffsetType::None)
        .into_iter()
        .map(|(w, _, _)| w.to_string())
        .collect())
}

impl BertTokenizer {
    /// The tokens of a whole-word vocabulary for `corpus`, deterministically: the special tokens,
    /// then the `max_words` most frequent words (ties in alphabetical order), then every character
    /// of the corpus alone and as a `##` continuation (so unseen words still tokenise).
    ///
    /// Suits closed corpora (generated captions, a fixed label set) where every word deserves a
    /// token and a run must give the same ids every time. Written by hand because the
    /// `tokenizers` trainers are not deterministic under ties.
    pub fn word_vocabulary<I, S>(
        corpus: I,
        max_words: usize,
        lowercase: bool,
    ) -> Result<Vec<String>, TokenizerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut chars = BTreeSet::new();
        for text in corpus {
            for word in bert_words(text.as_ref(), lowercase)? {
                chars.extend(word.chars());
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut words: Vec<(String, u64)> = counts.into_iter().collect();
        // Stable sort: equal counts keep the BTreeMap's alphabetical order.
        words.sort_by_key(|(_, n)| Reverse(*n));
        let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
        let mut seen: BTreeSet<String> = tokens.iter().cloned().collect();
        let singles = chars.iter().map(|c| c.to_string());
        let continuations = chars.iter().map(|c| format!("##{c}"));
        for token in words
            .into_iter()
            .take(max_words)
            .map(|(w, _)| w)
            .chain(singles)
            .chain(continuations)
        {
            if seen.insert(token.clone()) {
                tokens.push(token);
            }
        }
        Ok(tokens)
    }

    /// A tokenizer over `tokens` (line order = id, as in a `vocab.txt`), e.g. from
    /// [`BertTokenizer::word_vocabulary`].
    pub fn from_tokens(
        tokens: &[String],
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let mut vocab = ahash::AHashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            if vocab.insert(token.clone(), id as u32).is_some() {
                return Err(TokenizerError::Train(format!(
                    "token {token:?} appears twice in the vocabulary"
                )));
            }
        }
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Self::assemble(Tokenizer::new(model), "token list", options)
    }
}
