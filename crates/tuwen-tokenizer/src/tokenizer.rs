use std::path::Path;

use burn::tensor::Device;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{TextBatch, TokenizerError};

/// How a batch is padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pad to the longest sequence of the batch (never beyond `max_len`).
    #[default]
    Longest,
    /// Pad every batch to exactly `max_len`.
    Fixed,
}

/// Options that control encoding. They override anything a `tokenizer.json` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Maximum sequence length INCLUDING `[CLS]` and `[SEP]`; longer inputs are truncated
    /// (longest-first for pairs).
    pub max_len: usize,
    /// Batch padding policy.
    pub padding: Padding,
    /// Lowercase and strip accents (uncased models). Only used when building from a `vocab.txt`
    /// or training; a `tokenizer.json` carries its own normaliser.
    pub lowercase: bool,
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        Self {
            max_len: 512,
            padding: Padding::Longest,
            lowercase: true,
        }
    }
}

impl TokenizerOptions {
    /// Sets `max_len`.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Sets the padding policy.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets lowercasing (uncased vs cased vocabularies).
    pub fn with_lowercase(mut self, lowercase: bool) -> Self {
        self.lowercase = lowercase;
        self
    }
}

/// Ids of the BERT special tokens in the loaded vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `[PAD]`.
    pub pad: u32,
    /// `[UNK]`.
    pub unk: u32,
    /// `[CLS]`, first token of every sequence.
    pub cls: u32,
    /// `[SEP]`, closes each segment.
    pub sep: u32,
    /// `[MASK]`, used by masked language modelling.
    pub mask: u32,
}

impl SpecialTokens {
    /// Whether `id` is one of the special tokens (never chosen for masking).
    pub fn contains(&self, id: u32) -> bool {
        [self.pad, self.unk, self.cls, self.sep, self.mask].contains(&id)
    }
}

/// The special-token strings of the BERT format, in the order a trained vocabulary assigns them.
pub(crate) const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// One encoded text or text pair, without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, starting with `[CLS]`, each segment closed by `[SEP]`.
    pub ids: Vec<u32>,
    /// Token-type (segment) ids: 0 for the first text, 1 for the second of a pair.
    pub type_ids: Vec<u32>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the encoding has no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A BERT WordPiece tokenizer (`[CLS] a [SEP] b [SEP]`).
#[derive(Clone, Debug)]
pub struct BertTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    options: TokenizerOptions,
}

fn tok_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenize(e.to_string())
}

impl BertTokenizer {
    /// Loads a BERT `vocab.txt` (one token per line, line number = id), with the BERT normaliser
    /// (`options.lowercase` selects uncased/cased) and pre-tokeniser.
    pub fn from_vocab(
        path: impl AsRef<Path>,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let load_err = |reason: String| TokenizerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
        if text.trim().is_empty() {
            return Err(load_err("the vocabulary file is empty".into()));
        }
        let path_str = path
            .to_str()
            .ok_or_else(|| load_err("the path is not valid UTF-8".into()))?;
        let model = WordPiece::from_file(path_str)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        Self::assemble(Tokenizer::new(model), &path.display().to_string(), options)
    }

    /// Loads a HF `tokenizer.json`. Its normaliser and pre-tokeniser are kept; its padding and
    /// truncation settings are discarded in favour of `options`.
    pub fn from_tokenizer_json(
        path: impl AsRef<Path>,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::assemble(inner, &path.display().to_string(), options)
    }

    /// Loads `tokenizer.json` when the file name ends in `.json`, a `vocab.txt` otherwise.
    pub fn from_file(
        path: impl AsRef<Path>,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_tokenizer_json(path, options)
        } else {
            Self::from_vocab(path, options)
        }
    }

    /// Wires the BERT pipeline around a model and applies our options. A `tokenizer.json` that
    /// already carries a normaliser/pre-tokeniser/decoder keeps them.
    pub(crate) fn assemble(
        mut inner: Tokenizer,
        source: &str,
        options: TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let id = |token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or(TokenizerError::MissingSpecialToken {
                    source_name: source.to_string(),
                    token,
                })
        };
        let special = SpecialTokens {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        };
        if inner.get_normalizer().is_none() {
            // strip_accents = None follows `lowercase`, exactly as BERT's BasicTokenizer.
            inner
                .with_normalizer(Some(BertNormalizer::new(
                    true,
                    true,
                    None,
                    options.lowercase,
                )))
                .map_err(tok_err)?;
        }
        if inner.get_pre_tokenizer().is_none() {
            inner.with_pre_tokenizer(Some(BertPreTokenizer));
        }
        if inner.get_decoder().is_none() {
            inner.with_decoder(Some(WordPieceDecoder::default()));
        }
        // Always our own post-processor, so [CLS]/[SEP] ids are those of this vocabulary.
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), special.sep),
            ("[CLS]".into(), special.cls),
        )));
        // Special tokens written in the text (e.g. "[MASK]") map to their ids, as in HF.
        let added: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(added).map_err(tok_err)?;
        let mut tok = Self {
            inner,
            special,
            options: options.clone(),
        };
        tok.set_options(options)?;
        Ok(tok)
    }

    /// Replaces the encoding options (maximum length, padding).
    pub fn set_options(&mut self, options: TokenizerOptions) -> Result<(), TokenizerError> {
        if options.max_len < 3 {
            return Err(TokenizerError::Options(format!(
                "max_len {} leaves no room for a token between [CLS] and [SEP]",
                options.max_len
            )));
        }
        self.inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: options.max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tok_err)?;
        // Padding is done by `batch`, not by the tokenizers crate.
        self.inner.with_padding(None);
        self.options = options;
        Ok(())
    }

    /// The current options.
    pub fn options(&self) -> &TokenizerOptions {
        &self.options
    }

    /// Special-token ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Vocabulary size (the size of the embedding table a model needs).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id, if it is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer (for saving or advanced use).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    fn convert(enc: tokenizers::Encoding) -> Encoded {
        Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        }
    }

    /// Encodes one text as `[CLS] text [SEP]`.
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        self.inner
            .encode(text, true)
            .map(Self::convert)
            .map_err(tok_err)
    }

    /// Encodes a pair as `[CLS] a [SEP] b [SEP]` with token types 0 then 1.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoded, TokenizerError> {
        self.inner
            .encode((a, b), true)
            .map(Self::convert)
            .map_err(tok_err)
    }

    /// Encodes many texts (in parallel).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>, TokenizerError> {
        let inputs: Vec<EncodeInput> = texts.iter().map(|t| (*t).into()).collect();
        self.encode_inputs(inputs)
    }

    /// Encodes many text pairs (in parallel).
    pub fn encode_pair_batch(
        &self,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Encoded>, TokenizerError> {
        let inputs: Vec<EncodeInput> = pairs.iter().map(|&(a, b)| (a, b).into()).collect();
        self.encode_inputs(inputs)
    }

    fn encode_inputs(&self, inputs: Vec<EncodeInput>) -> Result<Vec<Encoded>, TokenizerError> {
        self.inner
            .encode_batch(inputs, true)
            .map(|v| v.into_iter().map(Self::convert).collect())
            .map_err(tok_err)
    }

    /// Encodes texts and pads them into a [`TextBatch`] on `device`.
    pub fn batch(&self, texts: &[&str], device: &Device) -> Result<TextBatch, TokenizerError> {
        Ok(self.pad(&self.encode_batch(texts)?, device))
    }

    /// Encodes text pairs and pads them into a [`TextBatch`] on `device`.
    pub fn batch_pairs(
        &self,
        pairs: &[(&str, &str)],
        device: &Device,
    ) -> Result<TextBatch, TokenizerError> {
        Ok(self.pad(&self.encode_pair_batch(pairs)?, device))
    }

    /// Pads already-encoded sequences according to the options.
    pub fn pad(&self, encoded: &[Encoded], device: &Device) -> TextBatch {
        let len = match self.options.padding {
            Padding::Fixed => self.options.max_len,
            Padding::Longest => encoded.iter().map(Encoded::len).max().unwrap_or(0),
        };
        TextBatch::from_encoded(encoded, len, self.special.pad, device)
    }

    /// Decodes ids back to text (WordPiece `##` pieces joined). With `skip_special_tokens`,
    /// `[CLS]`, `[SEP]`, `[PAD]`, ... are dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TokenizerError::UnknownId { id, vocab_size });
        }
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    /// Writes the vocabulary as a BERT `vocab.txt` (line number = id).
    pub fn save_vocab(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        let mut tokens: Vec<(String, u32)> = self.inner.get_vocab(true).into_iter().collect();
        tokens.sort_by_key(|(_, id)| *id);
        let mut text = String::new();
        for (expected, (token, id)) in tokens.iter().enumerate() {
            if *id as usize != expected {
                return Err(TokenizerError::Save {
                    path: path.to_path_buf(),
                    reason: format!("vocabulary ids are not contiguous (missing id {expected})"),
                });
            }
            text.push_str(token);
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| TokenizerError::Save {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes a `tokenizer.json` that HF tokenizers (Rust or Python) can load.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        self.inner
            .save(path, true)
            .map_err(|e| TokenizerError::Save {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
}
