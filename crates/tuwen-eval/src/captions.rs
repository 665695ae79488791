//! Caption metrics equal to [pycocoevalcap](https://github.com/salaniz/pycocoevalcap) 1.2
//! (`pip install pycocoevalcap==1.2`), the MS-COCO caption evaluation: BLEU-1..4, ROUGE-L and
//! CIDEr-D, after the PTB tokenization that `COCOEvalCap.evaluate` applies first. METEOR and SPICE
//! (Java programs with their own models) are not reproduced.
//! `tests/fixtures/make_caption_reference.py` scores a fixture with pycocoevalcap itself and the
//! `caption_eval` test checks that [`evaluate`] gives the same figures (to 1e-6; in practice
//! they agree to the last bit or two) and that [`ptb_tokenize`] gives the same tokens.
//!
//! # Tokenization
//!
//! pycocoevalcap's `tokenizer/ptbtokenizer.py` replaces `\n` in every caption by a space, joins
//! the captions of all images with `\n` into one file, runs the Stanford `PTBTokenizer` of
//! CoreNLP 3.4.1 on it with `-preserveLines -lowerCase`, splits the output into lines again and
//! drops the tokens `'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;` (compared with the
//! lower-cased tokens, so the parentheses, which the tokenizer writes `-lrb-` and `-rrb-`,
//! stay). No Rust crate implements that tokenizer, so this module carries a hand-written
//! re-implementation of it: the rules of CoreNLP 3.4.1's `PTBLexer.flex` (a JFlex grammar),
//! transcribed rule by rule as regular expressions, run with JFlex's semantics (the longest match
//! of all rules wins, the earlier rule on a tie, trailing context counts towards the length) and
//! with each rule's action (splitting `n't` and `'s`, `-LRB-` for `(`, ``` `` ``` and `''` for
//! double quotes, `...` for ellipses, a no-break space inside `3 1/2`, ...). Quirks reproduced:
//! `can't` -> `ca n't`, `cannot` -> `can not`, `gonna` -> `gon na`, `they're` at the very end of
//! the text -> `they re`, `y'know` -> `y' know`, `etc.` and `U.S.` keep their period,
//! `hello.world` and `photo.jpg` are one token, hyphenated words stay whole, characters outside
//! the Basic Multilingual Plane (emoji) are deleted, and what follows a caption in the joined
//! file can change how its end is tokenized (`the letter A.` before a caption starting with
//! `The ` loses its period).
//!
//! The Unicode classes of the grammar are those of the JFlex 1.5.1 that generated the 3.4.1 lexer
//! (Unicode 6.3, Basic Multilingual Plane only); every BMP character, alone and between letters,
//! digits and words, tokenizes as in Java, and so do a few hundred thousand random strings of
//! hard characters and fragments (see `make_caption_reference.py --more-cases`). Known remaining
//! differences, none of which caption text is likely to meet: a capital sigma next to a digit or
//! another non-letter inside a token may lower-case differently (Java chooses the final form by
//! word boundaries, Rust by the Unicode Final_Sigma context); lower-casing follows Rust's Unicode
//! tables rather than the JVM's; a text that holds U+E000 (private use), which stands in for the
//! UTF-16 halves of characters outside the Basic Multilingual Plane (emoji), has those lexed as
//! one character rather than two units (which only matters for one at the end of a web
//! address); the grammar's case-insensitive literal words also
//! match the Unicode case variants of their letters (`ſ`, the Kelvin sign) as simple case folding
//! defines them, which JFlex may not.
//!
//! Line breaks other than `\n` (`\r`, U+000B, U+000C, U+2028, U+2029) end a line for the Java
//! tokenizer, so pycocoevalcap gives every later caption the tokens of the one before it;
//! [`ptb_tokenize_batch`] and [`score`] reproduce that, and [`evaluate`] refuses such files
//! ([`CaptionEvalError::LineBreak`]).
//!
//! # Scores
//!
//! * BLEU-1..4 (`bleu/bleu_scorer.py`): corpus BLEU with n-gram counts clipped by their largest
//!   count in any one reference, the reference length closest to the candidate's (the shorter on
//!   a tie), precisions `(correct + 1e-15) / (guessed + 1e-9)` and the brevity penalty on the
//!   corpus lengths. `Bleu_n` is the geometric mean of the 1..n-gram precisions.
//! * ROUGE-L (`rouge/rouge.py`): the F-measure (beta 1.2) of the largest LCS precision and the
//!   largest LCS recall over the references (the two maxima are taken separately), averaged
//!   over the images. Tokens are split on single spaces, so an empty caption is one empty
//!   token.
//! * CIDEr-D (`cider/cider_scorer.py`): TF-IDF vectors of 1..4-grams with document frequencies
//!   counted over the references of the scored images and `log(number of images)`, clipped
//!   candidate weights, a Gaussian length penalty (sigma 6) on the difference in bigram counts
//!   (the script's `length`), averaged over the four n and the references, times 10, averaged
//!   over the images.
//!
//! Sums run in the scripts' order and means use NumPy's pairwise summation, so the figures
//! match to the last bit or two.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::primitives::PatternID;
use regex_automata::{Anchored, Input, MatchKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An image id, as in COCO's `images[].id`, `annotations[].image_id` and results' `image_id`.
pub type ImageId = u64;

/// Errors of [`evaluate`]; each names the file at fault and, where there is one, the record.
#[derive(Debug, thiserror::Error)]
pub enum CaptionEvalError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// A file is not JSON in the expected layout.
    #[error("{path}: malformed caption JSON: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// serde's message, with the key of the offending value and the line and column.
        detail: String,
    },
    /// The results file holds no result.
    #[error("{path}: no results (expected [{{\"image_id\": .., \"caption\": \"..\"}}, ...])")]
    NoResults {
        /// The results file.
        path: PathBuf,
    },
    /// A result is for an image the references do not list.
    #[error(
        "{path}: result {index} is for image_id {image_id}, which is not among the images of \
         {references}"
    )]
    UnknownImage {
        /// The results file.
        path: PathBuf,
        /// Position of the result in the file's array (from 0).
        index: usize,
        /// The image id.
        image_id: ImageId,
        /// The references file.
        references: PathBuf,
    },
    /// Two results caption the same image.
    #[error("{path}: results {first} and {index} both caption image_id {image_id}")]
    DuplicateResult {
        /// The results file.
        path: PathBuf,
        /// Position of the earlier result (from 0).
        first: usize,
        /// Position of the later result (from 0).
        index: usize,
        /// The image id.
        image_id: ImageId,
    },
    /// A result's caption is empty or only blanks.
    #[error("{path}: result {index} (image_id {image_id}) has an empty caption")]
    EmptyCaption {
        /// The results file.
        path: PathBuf,
        /// Position of the result (from 0).
        index: usize,
        /// The image id.
        image_id: ImageId,
    },
    /// A captioned image has no reference caption.
    #[error(
        "{path}: image_id {image_id} (captioned by result {index} of {results}) has no \
         reference caption in the annotations"
    )]
    NoReferences {
        /// The references file.
        path: PathBuf,
        /// The image id.
        image_id: ImageId,
        /// The results file.
        results: PathBuf,
        /// Position of the result for that image (from 0).
        index: usize,
    },
    /// A caption holds a line break other than `\n`, on which the Stanford tokenizer starts a new
    /// line, so that pycocoevalcap would give every later caption the tokens of another.
    #[error(
        "{path}: the caption of {record} {index} (image_id {image_id}) contains the line break \
         U+{code:04X}, which makes pycocoevalcap's tokenizer misalign every later caption; \
         replace it with a space"
    )]
    LineBreak {
        /// The file.
        path: PathBuf,
        /// `"annotation"` or `"result"`.
        record: &'static str,
        /// Position of the record in its array (from 0).
        index: usize,
        /// The image id.
        image_id: ImageId,
        /// The line break's code point.
        code: u32,
    },
}

/// The six scores of `COCOEvalCap.eval` that this module reproduces, serialised with the same
/// keys: `Bleu_1`, `Bleu_2`, `Bleu_3`, `Bleu_4`, `ROUGE_L` and `CIDEr`. Fractions (BLEU and
/// ROUGE-L in 0..=1, CIDEr-D in 0..=10), not percentages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptionScores {
    /// BLEU with unigrams.
    #[serde(rename = "Bleu_1")]
    pub bleu_1: f64,
    /// BLEU with 1- and 2-grams.
    #[serde(rename = "Bleu_2")]
    pub bleu_2: f64,
    /// BLEU with 1- to 3-grams.
    #[serde(rename = "Bleu_3")]
    pub bleu_3: f64,
    /// BLEU with 1- to 4-grams.
    #[serde(rename = "Bleu_4")]
    pub bleu_4: f64,
    /// ROUGE-L F-measure (beta 1.2).
    #[serde(rename = "ROUGE_L")]
    pub rouge_l: f64,
    /// CIDEr-D.
    #[serde(rename = "CIDEr")]
    pub cider: f64,
}

/// Corpus scores and the score of every image, as pycocoevalcap's `COCOEvalCap.eval` and
/// `COCOEvalCap.imgToEval` (whose per-image `Bleu_n` is the sentence BLEU of that image alone).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptionEvaluation {
    /// The corpus scores (`COCOEvalCap.eval`).
    pub scores: CaptionScores,
    /// The scores of each scored image (`COCOEvalCap.imgToEval`), by image id.
    pub per_image: BTreeMap<ImageId, CaptionScores>,
}

#[derive(Deserialize)]
struct ReferencesFile {
    images: Vec<ImageRecord>,
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct ImageRecord {
    id: ImageId,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: ImageId,
    caption: String,
}

#[derive(Deserialize)]
struct ResultRecord {
    image_id: ImageId,
    caption: String,
}

/// Scores a results file (`[{"image_id", "caption"}]`) against COCO caption annotations
/// (`{"images": [{"id", ..}], "annotations": [{"image_id", "caption", ..}]}`) as pycocoevalcap
/// 1.2 does when its `params['image_id']` are the results' images (as in its example script):
/// the images that have a result are scored, in the order of the annotations' `images`, each
/// against its annotations in file order.
///
/// Where pycocotools or pycocoevalcap assert, crash or silently misalign, this returns a
/// [`CaptionEvalError`] naming the file and the record: a result for an image not among the
/// references' `images`, two results for one image, a result with an empty caption, no results,
/// a captioned image without annotations, or a caption with a line break other than `\n` (see the
/// [module](self) documentation). Unlike pycocotools, annotations need no `id`.
pub fn evaluate(references: &Path, results: &Path) -> Result<CaptionEvaluation, CaptionEvalError> {
    let reference_file: ReferencesFile = read_json(references)?;
    let result_records: Vec<ResultRecord> = read_json(results)?;
    if result_records.is_empty() {
        return Err(CaptionEvalError::NoResults {
            path: results.to_path_buf(),
        });
    }
    let listed: HashSet<ImageId> = reference_file.images.iter().map(|i| i.id).collect();
    // Result index per captioned image.
    let mut captioned: HashMap<ImageId, usize> = HashMap::with_capacity(result_records.len());
    for (index, r) in result_records.iter().enumerate() {
        if !listed.contains(&r.image_id) {
            return Err(CaptionEvalError::UnknownImage {
                path: results.to_path_buf(),
                index,
                image_id: r.image_id,
                references: references.to_path_buf(),
            });
        }
        if let Some(&first) = captioned.get(&r.image_id) {
            return Err(CaptionEvalError::DuplicateResult {
                path: results.to_path_buf(),
                first,
                index,
                image_id: r.image_id,
            });
        }
        if r.caption.trim_matches(is_python_space).is_empty() {
            return Err(CaptionEvalError::EmptyCaption {
                path: results.to_path_buf(),
                index,
                image_id: r.image_id,
            });
        }
        check_line_breaks(&r.caption, results, "result", index, r.image_id)?;
        captioned.insert(r.image_id, index);
    }
    // `cocoRes.getImgIds()`: the references' images (first listing of each) that have a result.
    let mut order = Vec::with_capacity(captioned.len());
    let mut seen = HashSet::with_capacity(captioned.len());
    for image in &reference_file.images {
        if captioned.contains_key(&image.id) && seen.insert(image.id) {
            order.push(image.id);
        }
    }
    let mut refs: HashMap<ImageId, Vec<String>> = HashMap::with_capacity(order.len());
    for (index, a) in reference_file.annotations.into_iter().enumerate() {
        if captioned.contains_key(&a.image_id) {
            check_line_breaks(&a.caption, references, "annotation", index, a.image_id)?;
            refs.entry(a.image_id).or_default().push(a.caption);
        }
    }
    let mut images = Vec::with_capacity(order.len());
    for id in order {
        let Some(captions) = refs.remove(&id) else {
            return Err(CaptionEvalError::NoReferences {
                path: references.to_path_buf(),
                image_id: id,
                results: results.to_path_buf(),
                index: captioned[&id],
            });
        };
        let candidate = result_records[captioned[&id]].caption.as_str();
        images.push((id, candidate, captions));
    }
    Ok(score_in_order(images.iter().map(
        |(id, candidate, refs)| (*id, *candidate, refs.as_slice()),
    )))
}

/// Scores decoded captions against reference captions in memory, exactly as [`evaluate`] scores
/// files holding them: the images of `candidates` are scored in ascending id order (the order
/// only matters through the joined tokenization and the last bits of the sums). Captions are
/// tokenized here ([`ptb_tokenize_batch`]); pass them as written.
///
/// # Panics
///
/// If `candidates` is empty, or an image of `candidates` has no entry or no caption in
/// `references` (pycocoevalcap asserts on both).
pub fn score(
    references: &BTreeMap<ImageId, Vec<String>>,
    candidates: &BTreeMap<ImageId, String>,
) -> CaptionScores {
    score_per_image(references, candidates).scores
}

/// [`score`], with the score of every image as well.
///
/// # Panics
///
/// As [`score`].
pub fn score_per_image(
    references: &BTreeMap<ImageId, Vec<String>>,
    candidates: &BTreeMap<ImageId, String>,
) -> CaptionEvaluation {
    assert!(!candidates.is_empty(), "no candidate captions to score");
    score_in_order(candidates.iter().map(|(id, candidate)| {
        let refs = references
            .get(id)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| panic!("image {id} has a candidate caption but no references"));
        (*id, candidate.as_str(), refs.as_slice())
    }))
}

/// The PTB tokens that pycocoevalcap gives `caption` when it is tokenized alone: lower-cased,
/// split as the Stanford tokenizer splits (`"A man's dog can't (see)."` ->
/// `a man 's dog ca n't -lrb- see -rrb-`), punctuation tokens dropped. See the
/// [module](self) documentation.
pub fn ptb_tokenize(caption: &str) -> Vec<String> {
    ptb_tokenize_batch(&[caption]).pop().unwrap_or_default()
}

/// The PTB tokens of each caption when pycocoevalcap tokenizes them in one call (one
/// `PTBTokenizer.tokenize` call, which sees the captions as the lines of one file, in this
/// order): the end of a caption can depend on the start of the next one. A caption holding a
/// line break other than `\n` shifts the tokens of all later captions by a line, as in
/// pycocoevalcap (the lines left over are dropped; a caption left without a line gets no tokens).
pub fn ptb_tokenize_batch<S: AsRef<str>>(captions: &[S]) -> Vec<Vec<String>> {
    tokenize_lines(captions)
        .into_iter()
        .map(|line| {
            if line.is_empty() {
                Vec::new()
            } else {
                line.split(' ').map(str::to_owned).collect()
            }
        })
        .collect()
}

/// Scores images given in evaluation order as `(id, candidate, references)`.
fn score_in_order<'a>(
    images: impl Iterator<Item = (ImageId, &'a str, &'a [String])>,
) -> CaptionEvaluation {
    let mut ids = Vec::new();
    let mut candidates = Vec::new();
    let mut ref_counts = Vec::new();
    let mut references: Vec<&str> = Vec::new();
    for (id, candidate, refs) in images {
        ids.push(id);
        candidates.push(candidate);
        ref_counts.push(refs.len());
        references.extend(refs.iter().map(String::as_str));
    }
    // COCOEvalCap.evaluate tokenizes all references in one call, then all results in another.
    let mut tokenized_refs = tokenize_lines(&references).into_iter();
    let refs: Vec<Vec<String>> = ref_counts
        .iter()
        .map(|&n| tokenized_refs.by_ref().take(n).collect())
        .collect();
    let cands = tokenize_lines(&candidates);
    let scored = Scored::new(&cands, &refs);
    let per_image = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, scored.image(i)))
        .collect();
    CaptionEvaluation {
        scores: scored.corpus(),
        per_image,
    }
}

// ---------------------------------------------------------------------------------------------
// Scores
// ---------------------------------------------------------------------------------------------

/// Python's `str.isspace` (used by `str.split()` and `str.rstrip()`): Unicode White_Space plus
/// the information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: the words of a tokenized caption as BLEU and CIDEr see them (a token
/// with a no-break space inside is two words there, one token for ROUGE-L).
fn python_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_python_space).filter(|w| !w.is_empty())
}

/// An n-gram (n = 1..=4) of interned words: word id + 1 in each 32-bit lane, 0 past its end.
type Gram = u128;

fn gram_len(gram: Gram) -> usize {
    (0..4)
        .take_while(|lane| (gram >> (32 * lane)) as u32 != 0)
        .count()
}

/// FxHash-style hasher for [`Gram`] keys: the maps of n-grams are the hot spot of scoring.
#[derive(Default)]
struct GramHasher(u64);

impl std::hash::Hasher for GramHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u128(&mut self, word: u128) {
        self.write_u64(word as u64);
        self.write_u64((word >> 64) as u64);
    }
}

type GramMap<V> = HashMap<Gram, V, std::hash::BuildHasherDefault<GramHasher>>;

/// Gives every distinct word a number.
#[derive(Default)]
struct Interner<'a>(HashMap<&'a str, u32>);

impl<'a> Interner<'a> {
    fn words(&mut self, caption: &'a str) -> Vec<u32> {
        python_words(caption)
            .map(|w| {
                let next = u32::try_from(self.0.len()).expect("fewer than 2^32 - 1 words");
                *self.0.entry(w).or_insert(next)
            })
            .collect()
    }
}

/// The n-grams (n = 1..=4) of a caption with their counts, in the order the scripts' `precook`
/// inserts them into its dict (by n, then by first position), and the caption's length.
struct NGrams {
    order: Vec<Gram>,
    counts: GramMap<usize>,
    len: usize,
}

impl NGrams {
    fn new(words: &[u32]) -> Self {
        let mut order = Vec::new();
        let mut counts = GramMap::default();
        for n in 1..=4 {
            for window in words.windows(n) {
                let gram = window
                    .iter()
                    .enumerate()
                    .fold(0, |g, (lane, &w)| g | (Gram::from(w) + 1) << (32 * lane));
                let count = counts.entry(gram).or_insert(0);
                if *count == 0 {
                    order.push(gram);
                }
                *count += 1;
            }
        }
        NGrams {
            order,
            counts,
            len: words.len(),
        }
    }
}

/// Per-image intermediate results and the corpus sums.
struct Scored {
    bleu: Vec<[f64; 4]>,
    rouge: Vec<f64>,
    cider: Vec<f64>,
    /// BLEU's corpus totals: correct and guessed n-grams, candidate and reference lengths.
    correct: [usize; 4],
    guess: [usize; 4],
    test_len: usize,
    ref_len: usize,
}

impl Scored {
    fn new(candidates: &[String], references: &[Vec<String>]) -> Self {
        let mut interner = Interner::default();
        let cand_grams: Vec<NGrams> = candidates
            .iter()
            .map(|c| NGrams::new(&interner.words(c)))
            .collect();
        let ref_grams: Vec<Vec<NGrams>> = references
            .iter()
            .map(|refs| {
                refs.iter()
                    .map(|r| NGrams::new(&interner.words(r)))
                    .collect()
            })
            .collect();
        let mut scored = Scored {
            bleu: Vec::with_capacity(candidates.len()),
            rouge: Vec::with_capacity(candidates.len()),
            cider: cider(&cand_grams, &ref_grams),
            correct: [0; 4],
            guess: [0; 4],
            test_len: 0,
            ref_len: 0,
        };
        for i in 0..candidates.len() {
            scored.add_bleu(&cand_grams[i], &ref_grams[i]);
            scored.rouge.push(rouge_l(&candidates[i], &references[i]));
        }
        scored
    }

    /// `cook_refs`, `cook_test` and the per-sentence part of `BleuScorer.compute_score` with the
    /// option `closest`.
    fn add_bleu(&mut self, test: &NGrams, refs: &[NGrams]) {
        let test_len = test.len;
        // The reference length closest to the candidate's, the shorter on a tie.
        let ref_len = refs
            .iter()
            .map(|r| r.len)
            .min_by_key(|&l| (l.abs_diff(test_len), l))
            .unwrap_or(0);
        let mut max_counts = GramMap::default();
        for r in refs {
            for (&gram, &count) in &r.counts {
                let m = max_counts.entry(gram).or_insert(0);
                *m = count.max(*m);
            }
        }
        let mut correct = [0usize; 4];
        for (gram, &count) in &test.counts {
            correct[gram_len(*gram) - 1] += count.min(max_counts.get(gram).copied().unwrap_or(0));
        }
        let guess: [usize; 4] = std::array::from_fn(|k| (test_len + 1).saturating_sub(k + 1));
        for k in 0..4 {
            self.correct[k] += correct[k];
            self.guess[k] += guess[k];
        }
        self.test_len += test_len;
        self.ref_len += ref_len;
        self.bleu
            .push(bleu_from_counts(&correct, &guess, test_len, ref_len));
    }

    fn image(&self, i: usize) -> CaptionScores {
        let [bleu_1, bleu_2, bleu_3, bleu_4] = self.bleu[i];
        CaptionScores {
            bleu_1,
            bleu_2,
            bleu_3,
            bleu_4,
            rouge_l: self.rouge[i],
            cider: self.cider[i],
        }
    }

    fn corpus(&self) -> CaptionScores {
        let [bleu_1, bleu_2, bleu_3, bleu_4] =
            bleu_from_counts(&self.correct, &self.guess, self.test_len, self.ref_len);
        CaptionScores {
            bleu_1,
            bleu_2,
            bleu_3,
            bleu_4,
            rouge_l: numpy_mean(&self.rouge),
            cider: numpy_mean(&self.cider),
        }
    }
}

/// BLEU-1..4 from clipped n-gram counts and lengths, as `BleuScorer.compute_score` computes both
/// the sentence and the corpus figures (with its `tiny` and `small` epsilons).
fn bleu_from_counts(
    correct: &[usize; 4],
    guess: &[usize; 4],
    test_len: usize,
    ref_len: usize,
) -> [f64; 4] {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let mut bleus = [0.0; 4];
    let mut bleu = 1.0;
    for k in 0..4 {
        bleu *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        bleus[k] = bleu.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (test_len as f64 + TINY) / (ref_len as f64 + SMALL);
    if ratio < 1.0 {
        for b in &mut bleus {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    bleus
}

/// `Rouge.calc_score`: the F-measure of the largest LCS precision and the largest LCS recall.
fn rouge_l(candidate: &str, references: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let cand: Vec<&str> = candidate.split(' ').collect();
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for reference in references {
        let refr: Vec<&str> = reference.split(' ').collect();
        let lcs = lcs_len(&refr, &cand) as f64;
        prec_max = prec_max.max(lcs / cand.len() as f64);
        rec_max = rec_max.max(lcs / refr.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        ((1.0 + BETA * BETA) * prec_max * rec_max) / (rec_max + BETA * BETA * prec_max)
    } else {
        0.0
    }
}

/// Length of the longest common subsequence of two token lists (`my_lcs`).
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// CIDEr-D of every image (`CiderScorer.compute_cider`, n = 4, sigma = 6).
fn cider(candidates: &[NGrams], references: &[Vec<NGrams>]) -> Vec<f64> {
    // `compute_doc_freq`: in how many images' reference sets each n-gram occurs.
    let mut document_frequency: GramMap<f64> = GramMap::default();
    let mut seen: GramMap<usize> = GramMap::default();
    for (image, refs) in references.iter().enumerate() {
        for &gram in refs.iter().flat_map(|r| &r.order) {
            if seen.insert(gram, image) != Some(image) {
                *document_frequency.entry(gram).or_insert(0.0) += 1.0;
            }
        }
    }
    let ref_len = (references.len() as f64).ln();
    let vector = |grams: &NGrams| TfIdf::new(grams, &document_frequency, ref_len);
    candidates
        .iter()
        .zip(references)
        .map(|(candidate, refs)| {
            let hyp = vector(candidate);
            let mut score = [0.0f64; 4];
            for r in refs {
                let sim = hyp.similarity(&vector(r));
                for n in 0..4 {
                    score[n] += sim[n];
                }
            }
            let mut avg = numpy_mean(&score);
            avg /= refs.len() as f64;
            avg * 10.0
        })
        .collect()
}

/// `counts2vec`: TF-IDF weights per n, in the dict's order, their norms and the bigram count.
struct TfIdf {
    order: [Vec<(Gram, f64)>; 4],
    weights: GramMap<f64>,
    norm: [f64; 4],
    length: usize,
}

impl TfIdf {
    fn new(grams: &NGrams, document_frequency: &GramMap<f64>, ref_len: f64) -> Self {
        let mut v = TfIdf {
            order: Default::default(),
            weights: GramMap::default(),
            norm: [0.0; 4],
            length: 0,
        };
        for &gram in &grams.order {
            let tf = grams.counts[&gram];
            let df = document_frequency
                .get(&gram)
                .copied()
                .unwrap_or(0.0)
                .max(1.0)
                .ln();
            let n = gram_len(gram) - 1;
            let w = tf as f64 * (ref_len - df);
            v.order[n].push((gram, w));
            v.weights.insert(gram, w);
            v.norm[n] += w * w;
            // The script's "length" counts bigrams (its `n == 1` is the 2-gram index).
            if n == 1 {
                v.length += tf;
            }
        }
        for norm in &mut v.norm {
            *norm = norm.sqrt();
        }
        v
    }

    /// `sim`: clipped cosine similarity per n with the Gaussian length penalty.
    fn similarity(&self, reference: &TfIdf) -> [f64; 4] {
        const SIGMA: f64 = 6.0;
        let delta = self.length as f64 - reference.length as f64;
        std::array::from_fn(|n| {
            let mut val = 0.0;
            for &(gram, hyp) in &self.order[n] {
                let refw = reference.weights.get(&gram).copied().unwrap_or(0.0);
                val += hyp.min(refw) * refw;
            }
            if self.norm[n] != 0.0 && reference.norm[n] != 0.0 {
                val /= self.norm[n] * reference.norm[n];
            }
            val * std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA))
        })
    }
}

/// `np.mean` of a float64 vector: NumPy's pairwise sum divided by the length.
fn numpy_mean(values: &[f64]) -> f64 {
    numpy_pairwise_sum(values) / values.len() as f64
}

/// NumPy's `pairwise_sum` for doubles (what `np.add.reduce` runs on a contiguous vector):
/// a plain loop below 8 values, eight interleaved accumulators up to 128, halves above.
fn numpy_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |sum, &x| sum + x)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            sum += x;
        }
        sum
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_pairwise_sum(&a[..half]) + numpy_pairwise_sum(&a[half..])
    }
}

// ---------------------------------------------------------------------------------------------
// PTB tokenization (Stanford CoreNLP 3.4.1's PTBLexer, re-implemented by hand)
// ---------------------------------------------------------------------------------------------

/// The tokens `ptbtokenizer.py` drops (compared after lower-casing).
const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Characters the Stanford tokenizer ends a line on, besides `\n` (which `ptbtokenizer.py`
/// turns into spaces). U+0085 is not among them: the grammar reads it as an ellipsis first.
const OTHER_LINE_BREAKS: [char; 5] = ['\r', '\u{0B}', '\u{0C}', '\u{2028}', '\u{2029}'];

/// Returns an error if `caption` would make the tokenizer start a new line.
fn check_line_breaks(
    caption: &str,
    path: &Path,
    record: &'static str,
    index: usize,
    image_id: ImageId,
) -> Result<(), CaptionEvalError> {
    let Some(c) = caption.chars().find(|c| OTHER_LINE_BREAKS.contains(c)) else {
        return Ok(());
    };
    // A line break inside a token (a web address, say) starts no line.
    if LEXER.lex(&caption.replace('\n', " ")).len() == 1 {
        return Ok(());
    }
    Err(CaptionEvalError::LineBreak {
        path: path.to_path_buf(),
        record,
        index,
        image_id,
        code: u32::from(c),
    })
}

/// `PTBTokenizer.tokenize` of pycocoevalcap on one list of captions: the tokenized caption
/// strings (tokens joined by single spaces), one per caption.
fn tokenize_lines<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let joined = captions
        .iter()
        .map(|c| c.as_ref().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let mut lines = LEXER.lex(&joined).into_iter();
    captions
        .iter()
        .map(|_| lines.next().map(|l| python_line(&l)).unwrap_or_default())
        .collect()
}

/// What `ptbtokenizer.py` makes of one output line of `PTBTokenizer -preserveLines -lowerCase`:
/// tokens lower-cased (Java's `toLowerCase(Locale.ENGLISH)`), joined by spaces, `rstrip`ped,
/// split on single spaces, punctuation dropped, joined by spaces again.
fn python_line(tokens: &[String]) -> String {
    let line = tokens
        .iter()
        .map(|t| t.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    line.trim_end_matches(is_python_space)
        .split(' ')
        .filter(|w| !PUNCTUATIONS.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a rule of the grammar does with the text it matched (its action in `PTBLexer.flex`,
/// with the options `ptbtokenizer.py` leaves at their defaults plus `tokenizeNLs`).
#[derive(Clone, Copy)]
enum Action {
    /// The text is the token.
    Keep,
    /// The text less its last `n` characters is the token; those are read again.
    Pushback(usize),
    /// The text without soft hyphens (U+00AD) is the token (`-` if nothing is left).
    SoftHyphens,
    /// Spaces in the text become no-break spaces (SGML tags and fractions like `3 1/2`).
    NoBreakSpaces,
    /// `--` (dash characters and entities).
    Dash,
    /// `&amp;` becomes `&`.
    Amp,
    /// Quotes become LaTeX quotes (`` ` `` and ``` `` ``` if `left`, `'` and `''` otherwise).
    Quote {
        /// Whether the quote is probably an opening one.
        left: bool,
    },
    /// ¼ ½ ¾ ⅓ ⅔ become `1/4` ... `2/3`.
    Fractions,
    /// ¢ becomes `cents`, £ `#`, € and other generic currency signs `$`.
    Currency,
    /// An acronym before a sentence start: a one-letter one (`A.`) loses its period, longer ones
    /// keep it; either way the period is read again.
    Acronym,
    /// An abbreviation at a sentence end: the token keeps its period, which is read again.
    RepeatPeriod,
    /// Telephone numbers: no-break spaces, `-LRB-` and `-RRB-` for parentheses.
    Phone,
    /// Emoticons: `-LRB-` and `-RRB-` for parentheses.
    Parentheses,
    /// A fixed token.
    Text(&'static str),
    /// Runs of hyphens: `--` when 3 or 4 long.
    Hyphens,
    /// `...`.
    Ellipsis,
    /// No token (blanks, zero-width and untokenizable characters).
    Skip,
    /// End of a line (`-preserveLines`).
    Newline,
}

/// The macros of `PTBLexer.flex` (CoreNLP 3.4.1), in Rust `regex` syntax. `{NAME}` (upper case)
/// refers to another macro (expanded in a group); `{2,4}` is a repetition, `\p{letter}` a Unicode
/// property (spelled in lower case so as not to read as a macro). The grammar is case-insensitive
/// (`%caseless`) except in character classes, hence the `(?i:...)` around literal words only.
/// `L`, `D` and `UPPER` are JFlex's `[:letter:]`, `[:digit:]` and `[:uppercase:]`: as of Unicode
/// 6.3 (the tables of the JFlex 1.5.1 that generated the 3.4.1 lexer: it takes letters of Unicode
/// 6.1 and rejects those of 7.0) and in the Basic Multilingual Plane (the lexer reads UTF-16
/// units, and a surrogate is none of them), with the letters whose category Unicode changed
/// since (U+1885, U+1886 were letters; New Tai Lue vowel signs and two Vedic signs were not).
const MACROS: &[(&str, &str)] = &[
    (
        "L",
        r"[[\p{letter}\u1885\u1886]&&\p{age:6.3}&&[\x00-\uFFFF]--[\u19B0-\u19C0\u19C8\u19C9\u1CF2\u1CF3]]",
    ),
    ("D", r"[\p{decimal_number}&&\p{age:6.3}&&[\x00-\uFFFF]]"),
    ("UPPER", r"[\p{uppercase}&&\p{age:6.3}&&[\x00-\uFFFF]]"),
    ("LD", r"{L}|{D}"),
    (
        "SGML",
        r#"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*|[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"#,
    ),
    (
        "SPMDASH",
        r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]",
    ),
    ("SPAMP", r"&(?i:amp);"),
    ("SPPUNC", r"&(?:(?i:HT|TL|UR|LR|QC|QL|QR|odq|cdq)|#[0-9]+);"),
    ("SPLET", r"&[aeiouAEIOU](?i:acute|grave|uml);"),
    ("SPACE", r"[ \t\u00A0\u2000-\u200A\u3000]"),
    ("SPACES", r"{SPACE}+"),
    ("NEWLINE", r"\r|\r?\n|\u2028|\u2029|\x0B|\x0C|\u0085"),
    ("SPACENL", r"{SPACE}|{NEWLINE}"),
    ("SPACENLS", r"{SPACENL}+"),
    ("SENTEND", r"{SPACENL}(?:{SPACENL}|{UPPER}|{SGML})"),
    ("DIGIT", r"{D}|[\u07C0-\u07C9]"),
    ("DATE", r"{DIGIT}{1,2}[\-/]{DIGIT}{1,2}[\-/]{DIGIT}{2,4}"),
    (
        "NUM",
        r"{DIGIT}+|{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+",
    ),
    ("NUMBER", r"[\-+]?{NUM}"),
    (
        "SUBSUPNUM",
        r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)",
    ),
    (
        "FRAC",
        r"(?:{DIGIT}{1,4}[\- \u00A0])?{DIGIT}{1,4}(?:\\?/|\u2044){DIGIT}{1,4}",
    ),
    ("FRAC2", r"[\u00BC\u00BD\u00BE\u2153-\u215E]"),
    ("DOLSIGN", r"[A-Z]*\$|#"),
    (
        "DOLSIGN2",
        r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
    ),
    (
        "LETTER",
        r"{L}|{SPLET}|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]",
    ),
    (
        "WORD",
        r"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*",
    ),
    (
        "FILENAME_EXT",
        r"(?i:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)",
    ),
    (
        "FILENAME",
        r"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*[.]{FILENAME_EXT}",
    ),
    (
        "THING",
        r"(?:[dDoOlL]{APOSETCETERA}{LD})?{LD}+(?:{HYPHEN}(?:[dDoOlL]{APOSETCETERA}{LD})?{LD}+)*",
    ),
    ("THINGA", r"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"),
    (
        "THING3",
        r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}",
    ),
    ("APOS", r"['\u0092\u2019]|&(?i:apos);"),
    ("APOSETCETERA", r"{APOS}|[`\u0091\u2018\u201B]"),
    (
        "HTHING",
        r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO2}\.))+",
    ),
    ("REDAUX", r"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"),
    ("SWORD", r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"),
    ("SREDAUX", r"(?i:n){APOSETCETERA}(?i:t)"),
    (
        "APOWORD",
        r"{APOS}(?i:n){APOS}?|[lLdDjJ]{APOS}|(?i:dunkin){APOS}|(?i:somethin){APOS}|(?i:ol){APOS}|{APOS}(?i:em)|[A-HJ-XZn]{APOSETCETERA}{L}{2}{L}*|{APOS}[2-9]0(?i:s)|{APOS}(?i:till?)|{L}{L}*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]{L}*|{APOS}(?i:cause)|(?i:cont'd)\.?|'(?i:twas)|(?i:nor'easter)|(?i:c'mon)|(?i:e'er)|(?i:s'mores)|(?i:ev'ry)|(?i:li'l)|(?i:nat'l)|(?i:o){APOSETCETERA}(?i:o)",
    ),
    ("APOWORD2", r"(?i:y){APOS}"),
    (
        "FULLURL",
        r#"(?i:https?)://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},-]"#,
    ),
    (
        "LIKELYURL",
        r#"(?:(?i:www)\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}|(?:[^ \t\n\f\r"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},-])?"#,
    ),
    (
        "EMAIL",
        r#"(?:&(?i:lt);|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00A0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r"<>|(){}.\u00A0]+(?:&(?i:gt);|>)?"#,
    ),
    ("TWITTER", r"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"),
    (
        "ABMONTH",
        r"(?i:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)",
    ),
    ("ABDAYS", r"(?i:Mon|Tue|Tues|Wed|Thu|Thurs|Fri)"),
    (
        "ABSTATE",
        r"(?i:Ala|Ariz)|A(?i:z)|A(?i:rk)|(?i:Calif|Colo|Conn|Ct|Dak)|D(?i:el)|(?i:Fla|Ga)|I(?i:ll)|(?i:Ind|Kans?|Ky)|L(?i:a)|M(?i:ass)|(?i:Md|Mich|Minn)|M(?i:iss)|(?i:Mo|Mont|Neb|Nev|Okla)|O(?i:re)|P(?i:a)|(?i:Penn|Tenn)|T(?i:ex)|(?i:Va|Vt)|W(?i:ash)|(?i:Wisc?|Wyo)",
    ),
    (
        "ABCOMP",
        r"(?i:Inc|Cos?|Corp)|(?i:Pp?t)[ye](?i:s)?|(?i:Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys)",
    ),
    ("ABNUM", r"(?i:tel|est|ext|sq)"),
    ("ABPTIT", r"(?i:Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq)"),
    (
        "ABBREV1",
        r"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|(?i:etc|al|seq|Bldg))\.",
    ),
    (
        "ACRO",
        r"[A-Za-z](?:\.[A-Za-z])*|(?i:(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))",
    ),
    (
        "ACRO2",
        r"[A-Za-z](?:\.[A-Za-z])+|(?i:(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))",
    ),
    (
        "ABTITLE",
        r"(?i:Mr|Mrs|Ms)|M(?i:iss)|(?i:Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc)",
    ),
    ("ABCOMP2", r"(?i:Invt|Elec|Natl)|(?i:M)[ft](?i:g)|(?i:Dept)"),
    (
        "ABBREV4",
        r"{ABTITLE}|(?i:vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph)|{ACRO}|{ABCOMP2}",
    ),
    ("ABBREV2", r"{ABBREV4}\."),
    ("ACRONYM", r"{ACRO}\."),
    ("ABBREV3", r"(?i:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."),
    (
        "PHONE",
        r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
    ),
    ("FAKEDUCKFEET", r"<<|>>"),
    ("LESSTHAN", r"<|&(?i:lt);"),
    ("GREATERTHAN", r">|&(?i:gt);"),
    ("HYPHEN", r"[\-_\u058A\u2010\u2011]"),
    ("HYPHENS", r"\-+"),
    ("LDOTS", r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"),
    ("FNMARKS", r"@+|#+|_+"),
    ("ASTS", r"\*+|(?:\\\*){1,3}"),
    ("INSENTP", r"[,;:\u3001]"),
    (
        "QUOTES",
        r"{APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}",
    ),
    ("DBLQUOT", r#""|&(?i:quot);"#),
    (
        "TBSPEC",
        r"-(?i:RRB|LRB|RCB|LCB|RSB|LSB)-|(?i:C\.D\.s)|(?i:pro)-|(?i:anti)-|(?i:S)(?:&|&(?i:amp);)(?i:P)-500|(?i:S)(?:&|&(?i:amp);)(?i:Ls)|(?i:Cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)",
    ),
    ("TBSPEC2", r"{APOS}[0-9][0-9]"),
    ("SMILEY", r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"),
    // The first alternative reads, in JFlex, `\.` `\[` `\^` `x` `=` then `~<` ("anything up to
    // and including the first <"), `>` and `]`: a slip in the grammar, kept as JFlex reads it.
    (
        "ASIANSMILEY",
        r"[\^x=~<>]\.\[\^(?i:x)=[^<]*<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)",
    ),
    // U+00A6, U+00A8 and U+00AF are written as literal characters in the grammar.
    (
        "MISCSYMBOL",
        r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]",
    ),
];

/// The words after which `{ACRONYM}` is taken to end a sentence (case-sensitive first letter).
const ACRONYM_CONTEXT: &str = r"{SPACENLS}(?:A(?i:bout)|A(?i:ccording)|A(?i:dditionally)|A(?i:fter)|A(?i:n)|A|A(?i:s)|A(?i:t)|B(?i:ut)|E(?i:arlier)|H(?i:e)|H(?i:er)|H(?i:ere)|H(?i:owever)|I(?i:f)|I(?i:n)|I(?i:t)|L(?i:ast)|M(?i:any)|M(?i:ore)|M(?i:r)\.|M(?i:s)\.|N(?i:ow)|O(?i:nce)|O(?i:ne)|O(?i:ther)|O(?i:ur)|S(?i:he)|S(?i:ince)|S(?i:o)|S(?i:ome)|S(?i:uch)|T(?i:hat)|T(?i:he)|T(?i:heir)|T(?i:hen)|T(?i:here)|T(?i:hese)|T(?i:hey)|T(?i:his)|W(?i:e)|W(?i:hen)|W(?i:hile)|W(?i:hat)|Y(?i:et)|Y(?i:ou)|{SGML}){SPACENL}";

/// The rules of `PTBLexer.flex` in the grammar's order (which breaks ties): the expression, the
/// trailing context (`r1/r2` in JFlex: `r2` must follow but is not part of the token; the rule's
/// length for the longest-match choice includes it) and the action. The rule for JFlex's
/// strict-Treebank-3 state, which ptbtokenizer.py does not enter, is left out.
fn rules() -> Vec<(&'static str, Option<&'static str>, Action)> {
    use Action::*;
    vec![
        (r"(?i:c)\+\+", None, Keep),
        (r"(?i:c|f)#", None, Keep),
        (r"(?i:cannot)", None, Pushback(3)),
        (r"'(?i:twas)", None, Pushback(3)),
        (r"'(?i:tis)", None, Pushback(2)),
        (r"(?i:gonna|gotta|lemme|gimme|wanna)", None, Pushback(2)),
        ("{SGML}", None, NoBreakSpaces),
        ("{SPMDASH}", None, Dash),
        ("{SPAMP}", None, Amp),
        ("{SPPUNC}", None, Keep),
        ("{WORD}", Some("{REDAUX}"), SoftHyphens),
        ("{SWORD}", Some("{SREDAUX}"), SoftHyphens),
        ("{WORD}", None, SoftHyphens),
        ("{APOWORD}", None, Keep),
        ("{APOWORD2}", Some("{L}"), Keep),
        ("{FULLURL}", None, Keep),
        ("{LIKELYURL}", None, Keep),
        ("{EMAIL}", None, Keep),
        ("{TWITTER}", None, Keep),
        ("{REDAUX}", Some("[^A-Za-z]"), Quote { left: false }),
        ("{SREDAUX}", Some("[^A-Za-z]"), Quote { left: false }),
        ("{DATE}", None, Keep),
        ("{NUMBER}", None, SoftHyphens),
        ("{SUBSUPNUM}", None, Keep),
        ("{FRAC}", None, NoBreakSpaces),
        ("{FRAC2}", None, Fractions),
        ("{TBSPEC}", None, Amp),
        ("{THING3}", None, Keep),
        ("{DOLSIGN}", None, Keep),
        ("{DOLSIGN2}", None, Currency),
        ("{ACRONYM}", Some(ACRONYM_CONTEXT), Acronym),
        ("{ABBREV3}", Some("{SPACENL}?{D}"), Keep),
        (
            r"(?:(?i:pt)[eyEY]|(?i:co))\.",
            Some("{SPACE}(?i:ltd|lim)"),
            Keep,
        ),
        ("{ABBREV1}", Some("{SENTEND}"), RepeatPeriod),
        ("{ABBREV1}", Some(r"(?s:.)(?s:.)"), Keep),
        ("{ABBREV1}", None, RepeatPeriod),
        ("{ABBREV2}", None, Keep),
        ("{ABBREV4}", Some("{SPACE}"), Keep),
        ("{ACRO}", Some("{SPACENL}"), Keep),
        ("{TBSPEC2}", Some("{SPACENL}"), Keep),
        ("{FILENAME}", Some(r"{SPACENL}|[.?!,]"), Keep),
        (r"{WORD}\.", Some("{INSENTP}"), SoftHyphens),
        ("{PHONE}", None, Phone),
        ("{DBLQUOT}", Some("[A-Za-z0-9$]"), Quote { left: true }),
        ("{DBLQUOT}", None, Quote { left: false }),
        (r"\x7F", None, Skip),
        ("{LESSTHAN}", None, Text("<")),
        ("{GREATERTHAN}", None, Text(">")),
        ("{SMILEY}", Some("[^A-Za-z0-9]"), Parentheses),
        ("{ASIANSMILEY}", None, Parentheses),
        (r"\{", None, Text("-LCB-")),
        (r"\}", None, Text("-RCB-")),
        (r"\[", None, Text("-LSB-")),
        (r"\]", None, Text("-RSB-")),
        (r"\(", None, Text("-LRB-")),
        (r"\)", None, Text("-RRB-")),
        ("{HYPHENS}", None, Hyphens),
        ("{LDOTS}", None, Ellipsis),
        ("{FNMARKS}", None, Keep),
        ("{ASTS}", None, Keep),
        ("{INSENTP}", None, Keep),
        (r"[?!]+", None, Keep),
        (
            r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]",
            None,
            Keep,
        ),
        ("=", None, Keep),
        ("/", None, Keep),
        (r"{HTHING}\.", Some("{INSENTP}"), SoftHyphens),
        ("{HTHING}", None, SoftHyphens),
        (r"{THING}\.", Some("{INSENTP}"), Keep),
        ("{THING}", None, Keep),
        (r"{THINGA}\.", Some("{INSENTP}"), Amp),
        ("{THINGA}", None, Amp),
        ("'", Some(r"[A-Za-z][^ \t\n\r\u00A0]"), Quote { left: true }),
        ("{REDAUX}", None, Quote { left: false }),
        ("{SREDAUX}", None, Quote { left: false }),
        ("{QUOTES}", None, Quote { left: false }),
        ("{FAKEDUCKFEET}", None, Keep),
        ("{MISCSYMBOL}", None, Keep),
        (r"\x00|{SPACES}|[\u200B\u200E-\u200F\uFEFF]", None, Skip),
        ("{NEWLINE}", None, Newline),
        (r"&(?i:nbsp);", None, Skip),
        // JFlex's `.`: anything but a line break; untokenizable, deleted with a warning.
        (r"[^\n\r\x0B\x0C\u0085\u2028\u2029]", None, Skip),
    ]
}

/// Replaces every `{NAME}` of `pattern` by the macro's expansion in a group.
fn expand(pattern: &str, macros: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if after.starts_with(|c: char| c.is_ascii_uppercase()) => {
                let name = &after[..close];
                let body = macros
                    .get(name)
                    .unwrap_or_else(|| panic!("PTB grammar: no macro {name}"));
                out.push_str("(?:");
                out.push_str(&expand(body, macros));
                out.push(')');
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The compiled grammar: one lazy DFA over all rules (each rule's expression followed by its
/// trailing context) that finds the longest match and the rules matching it, and one over the
/// two halves of every rule with trailing context, to split its match.
struct Lexer {
    actions: Vec<Action>,
    /// For each rule with trailing context, the pattern ids of its two halves in `halves`.
    split: Vec<Option<(PatternID, PatternID)>>,
    all: DFA,
    halves: DFA,
}

/// Lexed in place of each UTF-16 unit of a character outside the Basic Multilingual Plane: a
/// private-use character, which like a surrogate is in none of the grammar's positive classes.
const SURROGATE_STAND_IN: char = '\u{E000}';

thread_local! {
    /// Lazy-DFA caches (for [`Lexer::all`] and [`Lexer::halves`]) of this thread.
    static CACHES: RefCell<Option<(Cache, Cache)>> = const { RefCell::new(None) };
}

static LEXER: LazyLock<Lexer> = LazyLock::new(Lexer::new);

impl Lexer {
    fn new() -> Lexer {
        let macros: HashMap<&str, &str> = MACROS.iter().copied().collect();
        let mut actions = Vec::new();
        let mut split = Vec::new();
        let mut whole = Vec::new();
        let mut halves = Vec::new();
        for (expression, context, action) in rules() {
            let head = expand(expression, &macros);
            actions.push(action);
            match context {
                Some(context) => {
                    let tail = expand(context, &macros);
                    whole.push(format!("(?:{head})(?:{tail})"));
                    let first = PatternID::new(halves.len()).expect("few patterns");
                    let second = PatternID::new(halves.len() + 1).expect("few patterns");
                    halves.push(head);
                    halves.push(tail);
                    split.push(Some((first, second)));
                }
                None => {
                    whole.push(head);
                    split.push(None);
                }
            }
        }
        Lexer {
            actions,
            split,
            all: build_dfa(&whole),
            halves: build_dfa(&halves),
        }
    }

    /// Tokenizes `text` as `PTBTokenizer -preserveLines` does, before lower-casing: the tokens
    /// of each line (a text without line breaks is one line).
    ///
    /// The Java lexer reads UTF-16 units, so a character outside the Basic Multilingual Plane is
    /// two units for it, each matched only by negated classes and "any character". Such a
    /// character is lexed here as two [`SURROGATE_STAND_IN`]s, which the grammar treats the same,
    /// and restored in the tokens (unless the text holds the stand-in itself).
    fn lex(&self, text: &str) -> Vec<Vec<String>> {
        let astral: Vec<char> = text.chars().filter(|&c| c > '\u{FFFF}').collect();
        let units;
        let lexed = if astral.is_empty() || text.contains(SURROGATE_STAND_IN) {
            text
        } else {
            units = text
                .chars()
                .flat_map(|c| {
                    if c > '\u{FFFF}' {
                        [Some(SURROGATE_STAND_IN), Some(SURROGATE_STAND_IN)]
                    } else {
                        [Some(c), None]
                    }
                })
                .flatten()
                .collect::<String>();
            &units
        };
        let lines = CACHES.with_borrow_mut(|caches| {
            let (all, halves) =
                caches.get_or_insert_with(|| (self.all.create_cache(), self.halves.create_cache()));
            self.lex_with(lexed, all, halves)
        });
        if lexed.len() == text.len() {
            return lines
                .into_iter()
                .map(|line| line.into_iter().map(|(_, token)| token).collect())
                .collect();
        }
        // The stand-ins of each token are those of its source text, in order: the first of a
        // pair becomes the character again, the second nothing.
        let stand_ins: Vec<usize> = lexed
            .match_indices(SURROGATE_STAND_IN)
            .map(|(i, _)| i)
            .collect();
        lines
            .into_iter()
            .map(|line| {
                line.into_iter()
                    .map(|(start, token)| {
                        let mut unit = stand_ins.partition_point(|&i| i < start);
                        let mut restored = String::with_capacity(token.len());
                        for c in token.chars() {
                            if c == SURROGATE_STAND_IN {
                                if unit % 2 == 0 {
                                    restored.push(astral[unit / 2]);
                                }
                                unit += 1;
                            } else {
                                restored.push(c);
                            }
                        }
                        restored
                    })
                    .collect()
            })
            .collect()
    }

    /// The tokens of each line with the byte offset in `text` where each was matched.
    fn lex_with(
        &self,
        text: &str,
        all: &mut Cache,
        halves: &mut Cache,
    ) -> Vec<Vec<(usize, String)>> {
        let mut lines = vec![Vec::new()];
        let mut pos = 0;
        while pos < text.len() {
            let Some((end, rule)) = longest_match(&self.all, all, text, pos) else {
                // Every character matches some rule; this is only a safeguard.
                pos += text[pos..].chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let token_end = match self.split[rule] {
                Some((head, tail)) => split_point(&self.halves, halves, text, pos, end, head, tail),
                None => end,
            };
            let matched = &text[pos..token_end];
            let mut next = token_end;
            let token = match self.actions[rule] {
                Action::Keep => Some(matched.to_owned()),
                Action::Pushback(n) => {
                    next = back_chars(matched, n) + pos;
                    Some(text[pos..next].to_owned())
                }
                Action::SoftHyphens => Some(remove_soft_hyphens(matched)),
                Action::NoBreakSpaces => Some(matched.replace(' ', "\u{a0}")),
                Action::Dash => Some("--".to_owned()),
                Action::Amp => Some(normalize_amp(matched)),
                Action::Quote { left } => Some(latex_quotes(matched, left)),
                Action::Fractions => Some(
                    matched
                        .replace('\u{bc}', "1/4")
                        .replace('\u{bd}', "1/2")
                        .replace('\u{be}', "3/4")
                        .replace('\u{2153}', "1/3")
                        .replace('\u{2154}', "2/3"),
                ),
                Action::Currency => Some(
                    matched
                        .replace('\u{a2}', "cents")
                        .replace('\u{a3}', "#")
                        .replace(['\u{80}', '\u{a4}', '\u{20a0}', '\u{20ac}'], "$"),
                ),
                Action::Acronym => {
                    // The period is read again; "A." gives "A", "U.S." gives "U.S.".
                    next = token_end - 1;
                    if matched.encode_utf16().count() == 2 {
                        Some(text[pos..next].to_owned())
                    } else {
                        Some(matched.to_owned())
                    }
                }
                Action::RepeatPeriod => {
                    next = token_end - 1;
                    Some(matched.to_owned())
                }
                Action::Phone => Some(
                    matched
                        .replace(' ', "\u{a0}")
                        .replace('(', "-LRB-")
                        .replace(')', "-RRB-"),
                ),
                Action::Parentheses => Some(matched.replace('(', "-LRB-").replace(')', "-RRB-")),
                Action::Text(t) => Some(t.to_owned()),
                Action::Hyphens => {
                    let n = matched.len();
                    Some(if (3..=4).contains(&n) {
                        "--".to_owned()
                    } else {
                        matched.to_owned()
                    })
                }
                Action::Ellipsis => Some("...".to_owned()),
                Action::Skip => None,
                Action::Newline => {
                    lines.push(Vec::new());
                    None
                }
            };
            if let Some(token) = token {
                lines
                    .last_mut()
                    .expect("one line at least")
                    .push((pos, token));
            }
            pos = next;
        }
        lines
    }
}

fn build_dfa(patterns: &[String]) -> DFA {
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .starts_for_each_pattern(true)
                .cache_capacity(16 << 20)
                .minimum_cache_clear_count(None),
        )
        .build_many(patterns)
        .expect("the PTB grammar compiles")
}

/// The end of the longest match at `start` over all patterns, with the first pattern that
/// matches that much (JFlex's choice).
fn longest_match(dfa: &DFA, cache: &mut Cache, text: &str, start: usize) -> Option<(usize, usize)> {
    let input = Input::new(text)
        .span(start..text.len())
        .anchored(Anchored::Yes);
    let mut state = dfa
        .start_state_forward(cache, &input)
        .expect("anchored lazy-DFA start");
    let mut best = None;
    let first_pattern = |cache: &Cache, state| {
        (0..dfa.match_len(cache, state))
            .map(|i| dfa.match_pattern(cache, state, i).as_usize())
            .min()
            .expect("a match state has a pattern")
    };
    for (at, &byte) in text.as_bytes().iter().enumerate().skip(start) {
        state = dfa
            .next_state(cache, state, byte)
            .expect("lazy DFA never gives up");
        if state.is_match() {
            // Matches are reported one byte late: this one ends before `byte`.
            best = Some((at, first_pattern(cache, state)));
        } else if state.is_dead() {
            return best;
        }
    }
    state = dfa
        .next_eoi_state(cache, state)
        .expect("lazy DFA never gives up");
    if state.is_match() {
        best = Some((text.len(), first_pattern(cache, state)));
    }
    best
}

/// Whether pattern `pattern` matches exactly `text[start..end]`.
fn matches_exactly(
    dfa: &DFA,
    cache: &mut Cache,
    text: &str,
    start: usize,
    end: usize,
    pattern: PatternID,
) -> bool {
    let input = Input::new(text)
        .span(start..end)
        .anchored(Anchored::Pattern(pattern));
    let mut state = dfa
        .start_state_forward(cache, &input)
        .expect("anchored lazy-DFA start");
    for &byte in &text.as_bytes()[start..end] {
        state = dfa
            .next_state(cache, state, byte)
            .expect("lazy DFA never gives up");
        if state.is_dead() {
            return false;
        }
    }
    state = dfa
        .next_eoi_state(cache, state)
        .expect("lazy DFA never gives up");
    state.is_match()
}

/// Where the expression of a rule with trailing context ends inside its match
/// `text[start..end]`: the longest head whose rest the context matches (JFlex's choice; for the
/// grammar's rules the split is unique anyway).
fn split_point(
    dfa: &DFA,
    cache: &mut Cache,
    text: &str,
    start: usize,
    end: usize,
    head: PatternID,
    tail: PatternID,
) -> usize {
    let mut boundaries: Vec<usize> = text[start..end]
        .char_indices()
        .map(|(i, _)| start + i)
        .skip(1)
        .collect();
    boundaries.push(end);
    boundaries
        .into_iter()
        .rev()
        .find(|&k| {
            matches_exactly(dfa, cache, text, start, k, head)
                && matches_exactly(dfa, cache, text, k, end, tail)
        })
        .unwrap_or(end)
}

/// Byte length of `s` less its last `n` characters.
fn back_chars(s: &str, n: usize) -> usize {
    s.char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

/// `PTBLexer.removeSoftHyphens`.
fn remove_soft_hyphens(s: &str) -> String {
    let out: String = s.chars().filter(|&c| c != '\u{ad}').collect();
    if out.is_empty() { "-".to_owned() } else { out }
}

/// `PTBLexer.normalizeAmp`: `&amp;` in any case becomes `&`.
fn normalize_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if after.len() >= 5 && after.is_char_boundary(5) && after[..5].eq_ignore_ascii_case("&amp;")
        {
            out.push('&');
            rest = &after[5..];
        } else {
            out.push('&');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `PTBLexer.latexQuotes`: straight quotes (and the `&apos;` and `&quot;` entities, in lower case
/// only) by their probable side, then typographic quotes by their shape.
fn latex_quotes(s: &str, left: bool) -> String {
    let (single, double) = if left { ("`", "``") } else { ("'", "''") };
    let s = s
        .replace("&apos;", single)
        .replace('\'', single)
        .replace("&quot;", double)
        .replace('"', double);
    s.replace(['\u{91}', '\u{2018}', '\u{201b}', '\u{2039}'], "`")
        .replace(['\u{92}', '\u{2019}', '\u{203a}'], "'")
        .replace(['\u{93}', '\u{201c}', '\u{ab}'], "``")
        .replace(['\u{94}', '\u{201d}', '\u{bb}'], "''")
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Reads a JSON file; errors name the file and, through serde_path_to_error, the key.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CaptionEvalError> {
    crate::read_json(path, |detail| CaptionEvalError::Malformed {
        path: path.to_path_buf(),
        detail,
    })
}
