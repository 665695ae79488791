//! Batched caption decoding — greedy and beam search — with the semantics of HF transformers
//! `generate` (version **4.49.0**: `GenerationMixin._sample` / `_beam_search` with
//! `BeamSearchScorer`, `BeamHypotheses`, `MinLengthLogitsProcessor` and
//! `NoRepeatNGramLogitsProcessor`; 4.50 replaced that beam search by a vectorised one whose done
//! check and last step differ, see "Newer HF" below).
//!
//! A model takes part through [`StepModel`]: it feeds one token per running sequence and returns
//! log-probabilities of the next token. Everything else — beam scores, finished hypotheses,
//! n-gram bans, the minimum length, the done checks — is plain host Rust in this module, so it is
//! tested exhaustively with table models ([`crate::decoder::DecoderStepper`] and
//! [`crate::visual_bert::UnifiedCaptionStepper`] are the two real models), and against HF's own
//! `model.generate` on a toy model both sides compute bit for bit
//! (`tests/fixtures/make_generate_reference.py`; tests `hf_4_49_generate_reference`, all 900
//! results of a grid of greedy / 2, 3, 5 beams x length penalties x early stopping x min length x
//! n-gram bans x max length equal, and `hf_generate_reference` for 5.24.0).
//!
//! # Semantics (as HF 4.49.0 for an encoder-decoder whose decoder starts from `bos`)
//!
//! * A sequence starts as `[bos]`; `cur_len` is its length *including* `bos`. Generation stops
//!   when `cur_len` reaches [`GenerationConfig::max_length`], so at most `max_length - 1` tokens
//!   follow `bos`, the last of which may be `eos`.
//! * Per step the model's log-softmax is processed: while `cur_len < min_length`, `eos` gets
//!   `-inf` (`min_length` counts `bos`, so at least `min_length - 1` tokens precede `eos`); with
//!   `no_repeat_ngram_size = n > 0` every token that would complete an n-gram already present in
//!   the sequence (`bos` included) gets `-inf`. The processed values are *not* renormalised.
//! * **Greedy** (`num_beams == 1`): the argmax of the processed scores (first index on ties); a
//!   row that emits `eos` is finished and is no longer fed to the model.
//! * **Beam search** (`num_beams > 1`): beams start with scores `[0, -1e9, ..]` (f32, as HF, so
//!   only the first beam's tokens are considered at the first step). Candidate score = processed
//!   log-prob + running beam score (f32). The top `2 * num_beams` of `num_beams * vocab`
//!   candidates are taken in order; an `eos` candidate finishes a hypothesis only if its rank is
//!   below `num_beams`, with score `sum_logprobs / generated_len ^ length_penalty` where
//!   `generated_len = cur_len` (the generated tokens *with* the `eos`, *without* `bos`); other
//!   candidates fill the `num_beams` running beams. A batch item keeps its `num_beams` best
//!   hypotheses (HF's list, eviction and `worst_score` rules). It is done when it holds
//!   `num_beams` hypotheses and either `early_stopping` is true, or the best candidate score of
//!   the step (the maximum of the `2 * num_beams`, an `eos` one included) divided by
//!   `cur_len ^ length_penalty` — `cur_len` before the new token, i.e. HF's
//!   `(cur_len + 1) - decoder_prompt_len` — is not above the worst kept hypothesis. At
//!   `max_length` the open beams of unfinished items are added as hypotheses with
//!   `generated_len = cur_len - 1` (no `eos`). The result is the best hypothesis (the latest added
//!   on exact ties, as HF's `sorted(..).pop()`), its score HF's `sequence_scores`.
//! * Hypothesis scores and the done check are computed in f64 (HF does them with Python floats);
//!   the returned score is rounded to f32 as HF's `sequence_scores`.
//!
//! Deviations: `torch.topk` leaves the order of tied candidates unspecified; here ties go to the
//! lower flattened index (`beam * vocab + token`). It matters for the `-1e9` initial beams (whose
//! candidates all round to `-1e9` in f32) and for exact ties. Done batch items and finished greedy
//! rows are dropped from the model's rows instead of being padded (their outputs were ignored by
//! HF anyway). `early_stopping = "never"` is not offered. The greedy score (HF returns none) is
//! the score beam search gives the same sequence, so greedy equals beam search with one beam,
//! tokens and score.
//!
//! # Newer HF (4.50 and later, checked against 5.24.0)
//!
//! Greedy decoding is unchanged. The vectorised `_beam_search` of 4.50+ differs from the above in
//! two ways (on the reference grid they change 11 of 900 results, the test lists them):
//!
//! * **The `early_stopping = false` done check** (`_check_early_stop_heuristic`) divides the best
//!   *running* beam score after the step — `eos` candidates excluded — by the same length, where
//!   4.49 takes the best of all `2 * num_beams` candidates, `eos` ones included. When an `eos`
//!   candidate tops the step, 5.x stops the item sooner. With `length_penalty <= 0` both checks
//!   are exact (a continuation can never beat the bound), so results differ only for
//!   `length_penalty > 0`, where 5.x can keep a worse hypothesis than 4.49.
//! * **The last step** (`cur_len + 1 == max_length`): every one of the step's top `num_beams`
//!   candidates, `eos` or not, becomes a hypothesis with the same generated length (the lower
//!   `num_beams` of the `2 * num_beams` never do; they cannot win anyway). In 4.49 the `eos`
//!   ones are added first, and an item that thereby reaches `num_beams` hypotheses with
//!   `early_stopping = true` is done, so its open beams are never added. 5.x lets them compete:
//!   it can return a sequence cut at `max_length` where 4.49 returns a finished one with a lower
//!   score.
//!
//! With just these two changes (done check on `running[0].score`; at the last step the top
//! `num_beams` candidates all become hypotheses and the item ends) this module reproduced all 900
//! results of 5.24.0 too. Also, 5.x divides the f32 log-prob sum by the length penalty in f32
//! (4.49: Python floats); the scores agree within 1e-5. tuwen keeps 4.49's semantics.
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use tuwen_fusion::decoder::DecoderConfig;
//! use tuwen_fusion::generate::{GenerationConfig, generate};
//! let device = Device::default();
//! let decoder = DecoderConfig::new(30522, 384, 384).init(&device);
//! let encoded = Tensor::<3>::zeros([2, 40, 384], &device);
//! let config = GenerationConfig { num_beams: 3, max_length: 20, ..GenerationConfig::new(101, 102) };
//! let mut stepper = decoder.stepper(encoded, None, true);
//! let captions = generate(&mut stepper, 2, &config);
//! println!("{:?} {}", captions[0].tokens, captions[0].score);
//! ```

use serde::{Deserialize, Serialize};

/// Decoding settings, named and defaulted as HF `GenerationConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Beams; 1 = greedy decoding (HF default 1).
    pub num_beams: usize,
    /// Longest sequence *including* `bos` (and `eos` when it fits); HF default 20.
    pub max_length: usize,
    /// `eos` is banned while the sequence (with `bos`) is shorter than this; HF default 0.
    pub min_length: usize,
    /// Exponent of the generated length dividing a hypothesis' log-probability; > 0 favours long
    /// sequences, < 0 short ones (HF default 1.0).
    pub length_penalty: f32,
    /// Bans any token completing an n-gram of this size already in the sequence; 0 = off.
    pub no_repeat_ngram_size: usize,
    /// Beam search stops an item as soon as `num_beams` hypotheses are finished (HF default false:
    /// the heuristic done check, see the module doc).
    pub early_stopping: bool,
    /// The start token (HF `decoder_start_token_id`; `[CLS]` in tuwen's captions).
    pub bos: i64,
    /// The end token (`[SEP]` in tuwen's captions).
    pub eos: i64,
}

impl Default for GenerationConfig {
    /// [`GenerationConfig::new`] with bert-base-uncased's `[CLS]` (101) and `[SEP]` (102); set
    /// `bos` / `eos` from the run's tokenizer.
    fn default() -> Self {
        Self::new(101, 102)
    }
}

impl GenerationConfig {
    /// HF's defaults (greedy, `max_length` 20, `length_penalty` 1.0, no `min_length`, no n-gram
    /// ban, `early_stopping` false) with the given start and end tokens.
    pub fn new(bos: i64, eos: i64) -> Self {
        Self {
            num_beams: 1,
            max_length: 20,
            min_length: 0,
            length_penalty: 1.0,
            no_repeat_ngram_size: 0,
            early_stopping: false,
            bos,
            eos,
        }
    }

    /// Checks the values decoding can run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1 (1 = greedy decoding)".into());
        }
        if self.max_length < 2 {
            return Err(format!(
                "max_length {} leaves no room for a generated token: it counts the start token, so \
                 it must be at least 2",
                self.max_length
            ));
        }
        if self.min_length > self.max_length {
            return Err(format!(
                "min_length {} is larger than max_length {}: no sequence can satisfy both",
                self.min_length, self.max_length
            ));
        }
        if !self.length_penalty.is_finite() {
            return Err(format!(
                "length_penalty must be finite, got {}",
                self.length_penalty
            ));
        }
        if self.bos < 0 || self.eos < 0 {
            return Err(format!(
                "token ids must be non-negative, got bos {} and eos {}",
                self.bos, self.eos
            ));
        }
        Ok(())
    }
}

/// A model decoded one token at a time over a changing set of running sequences ("rows").
///
/// Before the first [`StepModel::step`] the model holds [`StepModel::rows`] empty sequences, one
/// per batch item.
pub trait StepModel {
    /// Number of sequences the model holds now.
    fn rows(&self) -> usize;
    /// Vocabulary size (length of each row of log-probabilities).
    fn vocab(&self) -> usize;
    /// Advances to `tokens.len()` new rows: new row `i` continues old row `parents[i]` (rows may
    /// be repeated or dropped) with `tokens[i]` appended, i.e. the model reorders its cached
    /// state by `parents` and feeds one token per row. Returns the log-probabilities of the next
    /// token, `[tokens.len() * vocab]`, row-major.
    ///
    /// `generate` calls it first with `parents = 0..rows` and `bos` tokens.
    fn step(&mut self, tokens: &[i64], parents: &[usize]) -> Vec<f32>;
}

/// One decoded sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The generated tokens, without `bos` and `eos`.
    pub tokens: Vec<i64>,
    /// `sum of (processed) log-probs / generated_len ^ length_penalty`, HF's `sequence_scores`
    /// (`generated_len` counts the `eos` when there is one).
    pub score: f32,
    /// Whether the sequence ended with `eos` (false: cut at `max_length`).
    pub finished: bool,
}

/// Decodes `batch` sequences: greedy when `cfg.num_beams == 1`, beam search otherwise.
///
/// # Panics
/// If `cfg` is invalid ([`GenerationConfig::validate`]), the model does not hold `batch` rows,
/// its vocabulary has fewer than 2 tokens or does not contain `bos` and `eos`, or a step returns
/// the wrong number of values.
pub fn generate(
    model: &mut impl StepModel,
    batch: usize,
    cfg: &GenerationConfig,
) -> Vec<Generated> {
    if cfg.num_beams == 1 {
        greedy_search(model, batch, cfg)
    } else {
        beam_search(model, batch, cfg)
    }
}

fn check(model: &impl StepModel, batch: usize, cfg: &GenerationConfig) -> usize {
    if let Err(e) = cfg.validate() {
        panic!("invalid GenerationConfig: {e}");
    }
    assert_eq!(
        model.rows(),
        batch,
        "the model holds {} rows, expected the batch size {batch}",
        model.rows()
    );
    let vocab = model.vocab();
    assert!(
        vocab >= 2,
        "decoding needs a vocabulary of at least 2 tokens"
    );
    for (name, id) in [("bos", cfg.bos), ("eos", cfg.eos)] {
        assert!(
            (id as usize) < vocab,
            "{name} {id} is outside the vocabulary of {vocab} tokens"
        );
    }
    vocab
}

fn step_checked(
    model: &mut impl StepModel,
    tokens: &[i64],
    parents: &[usize],
    vocab: usize,
) -> Vec<f32> {
    let out = model.step(tokens, parents);
    assert_eq!(
        out.len(),
        tokens.len() * vocab,
        "StepModel::step returned {} values for {} rows of {vocab}",
        out.len(),
        tokens.len()
    );
    out
}

/// The tokens `no_repeat_ngram_size = n` bans after `seq` (HF `_calc_banned_ngram_tokens`):
/// every token that followed an occurrence of the last `n - 1` tokens.
pub fn banned_ngram_tokens(seq: &[i64], n: usize) -> Vec<i64> {
    let len = seq.len();
    if n == 0 || len + 1 < n {
        return Vec::new();
    }
    let prefix = &seq[len + 1 - n..];
    seq.windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect()
}

/// Applies the logits processors (min length, n-gram ban) to one row of log-probs in place.
fn process_row(row: &mut [f32], seq: &[i64], cfg: &GenerationConfig) {
    if seq.len() < cfg.min_length {
        row[cfg.eos as usize] = f32::NEG_INFINITY;
    }
    for t in banned_ngram_tokens(seq, cfg.no_repeat_ngram_size) {
        if let Some(v) = row.get_mut(t as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// A NaN never wins a comparison.
fn key(x: f32) -> f32 {
    if x.is_nan() { f32::NEG_INFINITY } else { x }
}

/// The `k` best `(score, index)` pairs of a stream pushed in increasing index order, best
/// first; on equal scores the lower index ranks first (NaN counts as `-inf`).
struct TopK {
    k: usize,
    items: Vec<(f32, usize)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    fn push(&mut self, score: f32, index: usize) {
        let score = key(score);
        if self.items.len() == self.k {
            // A later index never displaces an equal score.
            match self.items.last() {
                Some(&(worst, _)) if score > worst => {
                    self.items.pop();
                }
                _ => return,
            }
        }
        let at = self.items.partition_point(|&(s, _)| s >= score);
        self.items.insert(at, (score, index));
    }
}

/// Index of the largest score, the first one on ties (`torch.argmax`).
fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate().skip(1) {
        if key(s) > key(scores[best]) {
            best = i;
        }
    }
    best
}

fn penalised(sum_logprobs: f32, generated_len: usize, length_penalty: f32) -> f64 {
    sum_logprobs as f64 / (generated_len as f64).powf(length_penalty as f64)
}

/// Greedy decoding (HF `_sample` without sampling). See the module doc.
///
/// # Panics
/// As [`generate`].
pub fn greedy_search(
    model: &mut impl StepModel,
    batch: usize,
    cfg: &GenerationConfig,
) -> Vec<Generated> {
    let vocab = check(model, batch, cfg);
    let mut seqs: Vec<Vec<i64>> = vec![vec![cfg.bos]; batch];
    let mut sums = vec![0f32; batch];
    let mut finished = vec![false; batch];
    let mut active: Vec<usize> = (0..batch).collect();
    let mut tokens = vec![cfg.bos; batch];
    let mut parents: Vec<usize> = (0..batch).collect();
    let mut cur_len = 1;
    let mut scores = Vec::with_capacity(vocab);
    while !active.is_empty() {
        let logp = step_checked(model, &tokens, &parents, vocab);
        let mut next = Vec::with_capacity(active.len());
        tokens.clear();
        parents.clear();
        for (row, &b) in active.iter().enumerate() {
            scores.clear();
            scores.extend_from_slice(&logp[row * vocab..(row + 1) * vocab]);
            process_row(&mut scores, &seqs[b], cfg);
            let best = argmax(&scores);
            sums[b] += scores[best];
            seqs[b].push(best as i64);
            if best as i64 == cfg.eos {
                finished[b] = true;
            } else {
                next.push(b);
                tokens.push(best as i64);
                parents.push(row);
            }
        }
        active = next;
        cur_len += 1;
        if cur_len >= cfg.max_length {
            break;
        }
    }
    (0..batch)
        .map(|b| {
            let seq = &seqs[b];
            let generated_len = seq.len() - 1;
            let end = if finished[b] {
                seq.len() - 1
            } else {
                seq.len()
            };
            Generated {
                tokens: seq[1..end].to_vec(),
                score: penalised(sums[b], generated_len, cfg.length_penalty) as f32,
                finished: finished[b],
            }
        })
        .collect()
}

/// The n-best list of one batch item (HF `BeamHypotheses`).
struct Hypotheses {
    num_beams: usize,
    /// `(score, tokens with bos without eos, ended with eos)`, in HF's list order.
    beams: Vec<(f64, Vec<i64>, bool)>,
    worst_score: f64,
}

impl Hypotheses {
    fn new(num_beams: usize) -> Self {
        Self {
            num_beams,
            beams: Vec::new(),
            worst_score: 1e9,
        }
    }

    fn add(&mut self, tokens: Vec<i64>, score: f64, finished: bool) {
        if self.beams.len() < self.num_beams || score > self.worst_score {
            self.beams.push((score, tokens, finished));
            if self.beams.len() > self.num_beams {
                // Python's sorted((s, idx)): by score, then by position.
                let mut order: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b.0, i))
                    .collect();
                order.sort_by(|a, b| {
                    a.0.partial_cmp(&b.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(&b.1))
                });
                self.beams.remove(order[0].1);
                self.worst_score = order[1].0;
            } else {
                self.worst_score = score.min(self.worst_score);
            }
        }
    }

    /// HF `BeamHypotheses.is_done` with `decoder_prompt_len = 1`.
    fn is_done(&self, best_sum_logprobs: f32, cur_len: usize, cfg: &GenerationConfig) -> bool {
        if self.beams.len() < self.num_beams {
            return false;
        }
        if cfg.early_stopping {
            return true;
        }
        self.worst_score >= penalised(best_sum_logprobs, cur_len - 1, cfg.length_penalty)
    }

    /// The best hypothesis; on exact ties the one added last (`sorted(..).pop()`).
    fn best(&self) -> Option<&(f64, Vec<i64>, bool)> {
        let mut best: Option<&(f64, Vec<i64>, bool)> = None;
        for b in &self.beams {
            if best.is_none_or(|x| b.0 >= x.0 || x.0.is_nan()) {
                best = Some(b);
            }
        }
        best
    }
}

struct Beam {
    /// With `bos`.
    tokens: Vec<i64>,
    score: f32,
    /// Row of the model output holding this beam's next-token log-probs.
    row: usize,
}

/// Beam search (HF `_beam_search` with `BeamSearchScorer`), for any `num_beams >= 1` (HF needs
/// 2 or more; with 1 this returns exactly what [`greedy_search`] does). See the module doc.
///
/// # Panics
/// As [`generate`].
pub fn beam_search(
    model: &mut impl StepModel,
    batch: usize,
    cfg: &GenerationConfig,
) -> Vec<Generated> {
    let vocab = check(model, batch, cfg);
    let nb = cfg.num_beams;
    let mut hyps: Vec<Hypotheses> = (0..batch).map(|_| Hypotheses::new(nb)).collect();
    let mut done = vec![false; batch];
    // The num_beams copies of [bos] share one model row per item: their log-probs are equal.
    let mut beams: Vec<Vec<Beam>> = (0..batch)
        .map(|b| {
            (0..nb)
                .map(|j| Beam {
                    tokens: vec![cfg.bos],
                    score: if j == 0 { 0.0 } else { -1e9 },
                    row: b,
                })
                .collect()
        })
        .collect();
    let parents: Vec<usize> = (0..batch).collect();
    let mut logp = step_checked(model, &vec![cfg.bos; batch], &parents, vocab);
    let mut cur_len = 1;
    let mut scores = Vec::with_capacity(vocab);
    loop {
        let open: Vec<usize> = (0..batch).filter(|&b| !done[b]).collect();
        for b in open {
            // Top 2 * num_beams of (beam x vocab) by processed log-prob + beam score (f32),
            // scanned in flattened order (beam * vocab + token).
            let mut top = TopK::new(2 * nb);
            for (j, beam) in beams[b].iter().enumerate() {
                scores.clear();
                scores.extend_from_slice(&logp[beam.row * vocab..(beam.row + 1) * vocab]);
                process_row(&mut scores, &beam.tokens, cfg);
                for (token, &s) in scores.iter().enumerate() {
                    top.push(s + beam.score, j * vocab + token);
                }
            }
            let mut running = Vec::with_capacity(nb);
            for (rank, &(score, flat)) in top.items.iter().enumerate() {
                let (j, token) = (flat / vocab, (flat % vocab) as i64);
                let parent = &beams[b][j];
                if token == cfg.eos {
                    if rank >= nb {
                        continue;
                    }
                    let score = penalised(score, cur_len, cfg.length_penalty);
                    hyps[b].add(parent.tokens.clone(), score, true);
                } else {
                    let mut tokens = Vec::with_capacity(parent.tokens.len() + 1);
                    tokens.extend_from_slice(&parent.tokens);
                    tokens.push(token);
                    running.push(Beam {
                        tokens,
                        score,
                        row: parent.row,
                    });
                }
                if running.len() == nb {
                    break;
                }
            }
            // At most one eos per beam: 2 * nb candidates always hold nb others.
            assert_eq!(running.len(), nb, "beam search lost running beams");
            done[b] = hyps[b].is_done(top.items[0].0, cur_len + 1, cfg);
            beams[b] = running;
        }
        cur_len += 1;
        if done.iter().all(|&d| d) || cur_len >= cfg.max_length {
            break;
        }
        let mut tokens = Vec::new();
        let mut parents = Vec::new();
        for b in (0..batch).filter(|&b| !done[b]) {
            for beam in &mut beams[b] {
                tokens.push(*beam.tokens.last().expect("beams hold bos"));
                parents.push(beam.row);
                beam.row = parents.len() - 1;
            }
        }
        logp = step_checked(model, &tokens, &parents, vocab);
    }
    for b in (0..batch).filter(|&b| !done[b]) {
        for beam in std::mem::take(&mut beams[b]) {
            let score = penalised(beam.score, beam.tokens.len() - 1, cfg.length_penalty);
            hyps[b].add(beam.tokens, score, false);
        }
    }
    hyps.iter()
        .map(|h| {
            let (score, tokens, finished) = h.best().expect("every item has hypotheses");
            Generated {
                tokens: tokens[1..].to_vec(),
                score: *score as f32,
                finished: *finished,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_hf() {
        // HF docstring example: size 2 over [40, 2883, 2712, 4346] after ...
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1], 2), vec![2]);
        assert_eq!(banned_ngram_tokens(&[1, 2, 1, 3, 1], 2), vec![2, 3]);
        assert_eq!(banned_ngram_tokens(&[1, 2, 3], 3), Vec::<i64>::new());
        assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        // Size 1 bans every token present, the start token included.
        assert_eq!(banned_ngram_tokens(&[5, 7], 1), vec![5, 7]);
        // Too short to hold an n-gram.
        assert_eq!(banned_ngram_tokens(&[5], 3), Vec::<i64>::new());
        assert_eq!(banned_ngram_tokens(&[5, 6], 0), Vec::<i64>::new());
    }

    #[test]
    fn top_k_breaks_ties_towards_the_lower_index() {
        let s = [0.5, 1.0, f32::NAN, 1.0, f32::NEG_INFINITY, 0.7, 1.0];
        let top = |k: usize| {
            let mut top = TopK::new(k);
            for (i, &x) in s.iter().enumerate() {
                top.push(x, i);
            }
            top.items.iter().map(|&(_, i)| i).collect::<Vec<_>>()
        };
        assert_eq!(top(3), vec![1, 3, 6]);
        assert_eq!(top(5), vec![1, 3, 6, 5, 0]);
        assert_eq!(top(7), vec![1, 3, 6, 5, 0, 2, 4]);
        assert_eq!(argmax(&s), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn hypotheses_keep_the_best_and_track_the_worst_as_hf() {
        let mut h = Hypotheses::new(2);
        h.add(vec![0, 1], -3.0, true);
        assert_eq!(h.worst_score, -3.0);
        h.add(vec![0, 2], -1.0, true);
        assert_eq!(h.worst_score, -3.0);
        h.add(vec![0, 3], -5.0, true); // not better than the worst: ignored
        assert_eq!(h.beams.len(), 2);
        h.add(vec![0, 4], -2.0, true); // evicts -3
        assert_eq!(h.worst_score, -2.0);
        let scores: Vec<f64> = h.beams.iter().map(|b| b.0).collect();
        assert_eq!(scores, vec![-1.0, -2.0]);
        h.add(vec![0, 5], -1.0, false); // tie with the best: the later one wins
        assert_eq!(h.best().unwrap().1, vec![0, 5]);
    }

    #[test]
    fn validate_rejects_unusable_configs() {
        let ok = GenerationConfig::new(1, 2);
        assert!(ok.validate().is_ok());
        let bad = |f: fn(&mut GenerationConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.num_beams = 0).contains("num_beams"));
        assert!(bad(|c| c.max_length = 1).contains("max_length"));
        assert!(bad(|c| c.min_length = 21).contains("min_length"));
        assert!(bad(|c| c.length_penalty = f32::NAN).contains("length_penalty"));
        assert!(bad(|c| c.eos = -1).contains("non-negative"));
    }
}
