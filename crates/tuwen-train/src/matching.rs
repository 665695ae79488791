//! Retrieval fine-tuning: a pretrained run trains image-text matching only — the contrastive
//! loss (ITC) over the batch's matched pairs and the binary match (ITM) on matched and randomly
//! mismatched pairs, no masking — and keeps the checkpoint with the best held-out Recall@1
//! (ITC ranking, the top `eval.retrieval_top_k` re-ranked by ITM, as ALBEF / BLIP evaluate).
//! With `finetune.negatives = "hard"` the mismatched captions are ITC-hard ones mined in the
//! batch (ALBEF) instead of random captions of other scenes.
//! A run without an ITC head gets a fresh one (`model.itc_dim`).

use burn::optim::GradientsParams;
use tuwen_data::scene::Split;
use tuwen_fusion::dropout::with_mask_seed;

use crate::batch::HostBatch;
use crate::data::Data;
use crate::event::EvalMetrics;
use crate::finetune::{TaskRun, is_core};
use crate::model::{ObjectiveSet, PretrainModel};
use crate::pretrain::StepLosses;
use crate::trainer::{Groups, Task};

/// Whether retrieval fine-tuning trains the parameter at `path`: the encoder, the ITC head and
/// the ITM head (VisualBERT's `sentence_image`, ViLBERT's `itm`, LXMERT's `matched`).
pub fn trains(path: &str) -> bool {
    is_core(path)
        || path.starts_with("itc.")
        || path.starts_with("encoder.VisualBert.sentence_image.")
        || path.starts_with("encoder.ViLBert.itm.")
        || path.starts_with("encoder.Lxmert.matched.")
}

/// Retrieval fine-tuning as a [`Task`] of the shared loop.
pub(crate) struct RetrievalTask {
    /// The scenes, unmasked, with mismatched captions at `data.mismatch_prob`.
    pub data: Data,
    pub run: TaskRun,
    /// Held-out images of the retrieval evaluation.
    pub images: usize,
    /// Candidates re-ranked by ITM.
    pub top_k: usize,
    /// ITM on ITC-hard negatives mined in the batch instead of random ones.
    pub hard_negatives: bool,
}

impl Task for RetrievalTask {
    type Batch = HostBatch;

    fn batch(&self, step: usize) -> Result<HostBatch, String> {
        let (mut rng, indices) = self.run.examples(step);
        self.data
            .host_batch(Split::Train, &indices, &mut rng)
            .map_err(|e| format!("step {step}: {e}"))
    }

    fn gradients(
        &self,
        model: &PretrainModel,
        batch: &HostBatch,
        seed: u64,
    ) -> Result<(GradientsParams, StepLosses), String> {
        model.check_batch(batch).map_err(|e| e.to_string())?;
        let device = &self.run.train_device;
        let set = ObjectiveSet {
            mlm: false,
            itm: true,
            hard_negatives: self.hard_negatives,
            mrc: false,
            itc: true,
            seed,
            ..ObjectiveSet::default()
        };
        // Dropout masks keyed by the step seed (`tuwen_fusion::dropout`).
        let out = with_mask_seed(seed, || {
            model.objectives_with(Some(batch), &batch.to_device(device), &set)
        })
        .map_err(|e| e.to_string())?;
        let losses = StepLosses {
            itm: out.itm.loss.clone().into_scalar::<f32>(),
            itm_accuracy: out.itm_accuracy,
            itc: out.itc.loss.clone().into_scalar::<f32>(),
            ..StepLosses::default()
        };
        let loss = out.itm.loss + out.itc.loss;
        Ok((GradientsParams::from_grads(loss.backward(), model), losses))
    }

    fn total(&self, losses: &StepLosses) -> f32 {
        losses.itm + losses.itc
    }

    fn train_values(&self, l: &StepLosses, grad_norm: f32, lr: f64) -> Vec<(&'static str, f64)> {
        vec![
            ("train/itm", l.itm as f64),
            ("train/itc", l.itc as f64),
            ("train/itm_accuracy", l.itm_accuracy as f64),
            ("train/grad_norm", grad_norm as f64),
            ("train/lr", lr),
        ]
    }

    fn evaluate(&self, model: &PretrainModel, split: Split) -> Result<EvalMetrics, String> {
        let retrieval = crate::pretrain::retrieval(
            model,
            &self.data,
            split,
            self.images,
            self.top_k,
            &self.run.device,
        )?;
        Ok(EvalMetrics {
            retrieval,
            ..EvalMetrics::default()
        })
    }

    fn metric_values(
        &self,
        prefix: &str,
        metrics: &EvalMetrics,
        _model: &PretrainModel,
    ) -> Vec<(String, f64)> {
        let r = &metrics.retrieval;
        let mut values = Vec::new();
        for (k, i) in [1, 5, 10].into_iter().zip(0..) {
            values.push((format!("{prefix}/i2t_r{k}"), r.image_to_text[i] as f64));
            values.push((format!("{prefix}/t2i_r{k}"), r.text_to_image[i] as f64));
        }
        values
    }

    fn groups(&self, model: &PretrainModel) -> Groups {
        self.run.groups(model, trains, "itc.")
    }

    fn test_note(&self, step: usize, metrics: &EvalMetrics) -> String {
        let r = &metrics.retrieval;
        format!(
            "test split, model of step {step} (selected on validation), {} images: \
             image->text R@1/5/10 {:.3}/{:.3}/{:.3}, text->image {:.3}/{:.3}/{:.3}",
            self.images,
            r.image_to_text[0],
            r.image_to_text[1],
            r.image_to_text[2],
            r.text_to_image[0],
            r.text_to_image[1],
            r.text_to_image[2]
        )
    }
}
