//! What a run reports: held-out metrics, step reports and the events a caller receives as a run
//! goes (pretraining and fine-tuning alike).

use serde::{Deserialize, Serialize};

use crate::config::BestMetric;
use crate::retrieval::Recalls;

/// Held-out metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalMetrics {
    /// ITM accuracy on matched/mismatched pairs.
    pub itm_accuracy: f32,
    /// MLM accuracy on masked tokens.
    pub mlm_accuracy: f32,
    /// MLM accuracy on masked colour and shape words.
    pub mlm_color_shape_accuracy: f32,
    /// Masked region classification accuracy (`objectives.mrc` with masked regions; 0 otherwise).
    pub region_accuracy: f32,
    /// Zero-shot retrieval (ITC ranking, ITM re-ranking of the top k; zeros without ITC).
    pub retrieval: Recalls,
    /// VQA accuracy, one question per held-out scene (0 without VQA).
    pub vqa_accuracy: f32,
    /// Captioning: BLEU-4 of the held-out captions (pycocoevalcap's; 0 otherwise).
    pub bleu4: f32,
    /// Captioning: CIDEr-D of the held-out captions (pycocoevalcap's "CIDEr"; 0 otherwise).
    pub cider: f32,
    /// Captioning: next-token accuracy of teacher-forced held-out captions (0 otherwise); in
    /// pretraining, that of the unified LM objective.
    pub lm_accuracy: f32,
    /// Held-out MLM loss (mean over masked tokens).
    #[serde(deserialize_with = "finite_or_null")]
    pub mlm_loss: f32,
    /// Held-out ITM loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub itm_loss: f32,
    /// ITM accuracy against ITC-hard negatives (`objectives.itm.negatives = "hard"`).
    #[serde(deserialize_with = "finite_or_null")]
    pub itm_hard_accuracy: f32,
    /// Held-out masked region classification loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub region_loss: f32,
    /// Held-out ITC loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub itc_loss: f32,
    /// Held-out grounding loss (alignment + smooth-L1 + 1 - GIoU).
    #[serde(deserialize_with = "finite_or_null")]
    pub grounding_loss: f32,
    /// Fraction of held-out phrases whose predicted box has IoU >= 0.5 with the gold box.
    #[serde(deserialize_with = "finite_or_null")]
    pub grounding_accuracy: f32,
    /// Fraction of held-out phrases whose top-1 aligned region is the gold one.
    #[serde(deserialize_with = "finite_or_null")]
    pub grounding_region_accuracy: f32,
    /// Held-out WRA loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub wra_loss: f32,
    /// Held-out MRFR loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub mrfr_loss: f32,
    /// Held-out MRC-KL loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub mrc_kl_loss: f32,
    /// Held-out unified LM loss.
    #[serde(deserialize_with = "finite_or_null")]
    pub lm_loss: f32,
}

/// A held-out loss as saved in `state.json`: JSON has no NaN or infinity (serde_json writes
/// `null` for them, e.g. the losses of a diverging model), so `null` reads back as NaN.
fn finite_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

impl EvalMetrics {
    /// The value of `metric`.
    pub fn get(&self, metric: BestMetric) -> f32 {
        // An objective that is off reports 0 (or NaN read back from JSON): it counts 0.
        let measured = |v: f32| if v.is_finite() { v } else { 0.0 };
        match metric {
            BestMetric::ItmMlmMean => {
                (measured(self.itm_accuracy) + measured(self.mlm_color_shape_accuracy)) / 2.0
            }
            BestMetric::ItmAccuracy => self.itm_accuracy,
            BestMetric::MlmColorShapeAccuracy => self.mlm_color_shape_accuracy,
            BestMetric::VqaAccuracy => self.vqa_accuracy,
            BestMetric::Cider => self.cider,
            BestMetric::RetrievalR1 => {
                (self.retrieval.image_to_text[0] + self.retrieval.text_to_image[0]) / 2.0
            }
        }
    }
}

/// One training step's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps of the run.
    pub steps: usize,
    /// MLM loss.
    pub mlm: f32,
    /// ITM loss.
    pub itm: f32,
    /// Region classification loss (0 without).
    pub region: f32,
    /// Image-text contrastive loss (0 without).
    pub itc: f32,
    /// VQA loss (0 without).
    pub vqa: f32,
    /// Captioning (next-token) loss (0 without).
    pub lm: f32,
    /// ITM accuracy of the batch.
    pub itm_accuracy: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate of the step.
    pub lr: f64,
    /// Scenes per second since the start (or resume).
    pub scenes_per_second: f64,
    /// Estimated seconds to the end.
    pub eta_seconds: f64,
    /// Non-finite steps skipped so far.
    pub skipped: usize,
}

/// What a run tells its caller as it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// A message (set-up, resume point).
    Note(String),
    /// A logged training step.
    Step(StepReport),
    /// A held-out evaluation at `step` (steps done); `best` when it set a new best.
    Eval {
        /// Steps done.
        step: usize,
        /// The metrics.
        metrics: EvalMetrics,
        /// Whether the `best` checkpoint was replaced.
        best: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_selection_metric_is_the_mean_of_itm_and_colour_shape_accuracy() {
        let metrics = |itm: f32, colour_shape: f32| EvalMetrics {
            itm_accuracy: itm,
            mlm_color_shape_accuracy: colour_shape,
            ..EvalMetrics::default()
        };
        let mean = BestMetric::ItmMlmMean;
        assert!((metrics(0.9, 0.7).get(mean) - 0.8).abs() < 1e-6);
        // The default run's validation at steps 3500 and 6000 (docs/benchmarks.md): ITM alone
        // prefers 3500 by one scene in 256; the mean prefers 6000.
        let (at_3500, at_6000) = (metrics(0.984, 0.745), metrics(0.980, 0.830));
        assert!(at_3500.get(BestMetric::ItmAccuracy) > at_6000.get(BestMetric::ItmAccuracy));
        assert!(at_6000.get(mean) > at_3500.get(mean));
        // An objective that is off (0, or NaN read back from state.json) counts 0.
        assert_eq!(metrics(f32::NAN, 0.6).get(mean), 0.3);
    }
}
