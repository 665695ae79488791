//! Objectives combined on real encoders: forward + backward of a whole pretraining step on every
//! backend (Flex, ndarray, wgpu), finite and reaching every head.

use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::{
    AttentionMask, BertConfig, UnifiedMode, ViLBertConfig, ViLBertInput, VisualBertConfig,
    VisualBertInput,
};
use tuwen_objectives::itc::{ItcConfig, ItcHead};
use tuwen_objectives::itm::{MatchLabel, Polarity, itm_loss, random_negatives};
use tuwen_objectives::lm::lm_loss;
use tuwen_objectives::mlm::{MaskingConfig, mask_tokens, mlm_loss};
use tuwen_objectives::mrm::mrc_kl_loss;
use tuwen_testkit::devices;

const B: usize = 3;
const T: usize = 6;
const V: usize = 4;

fn ids() -> Vec<i64> {
    (0..B * T)
        .map(|i| {
            if i % T == 0 {
                2
            } else if i % T == T - 1 {
                3
            } else {
                5 + (i * 7 % 40) as i64
            }
        })
        .collect()
}

fn finite(x: f32, what: &str) -> f32 {
    assert!(x.is_finite(), "{what} is not finite");
    x
}

#[test]
fn mlm_itm_mrm_itc_on_vilbert_and_mlm_itm_lm_on_visual_bert() {
    for backend in devices("mlm_itm_mrm_itc_on_vilbert_and_mlm_itm_lm_on_visual_bert") {
        let device = backend.device.clone().autodiff();
        let mut rng = StdRng::seed_from_u64(1);
        let raw = ids();
        let attention = vec![1i64; B * T];
        let masking = MaskingConfig {
            mask_prob: 0.5,
            ..MaskingConfig::default()
        };
        let masked = mask_tokens(
            &raw,
            &attention,
            &[0, 1, 2, 3, 4],
            50,
            4,
            &masking,
            &mut rng,
        );
        assert!(!masked.positions.is_empty());
        let input_ids =
            Tensor::<2, Int>::from_data(TensorData::new(masked.input_ids.clone(), [B, T]), &device);
        // ITM: rows 1.. are treated as mismatched pairs (their captions would be swapped for
        // random negatives by a batcher); row 0 is a matched pair.
        assert!(random_negatives(B, &mut rng).is_some());
        let labels: Vec<MatchLabel> = (0..B)
            .map(|i| {
                if i == 0 {
                    MatchLabel::Match
                } else {
                    MatchLabel::Mismatch
                }
            })
            .collect();

        // Two-stream: ViLBERT with MLM + ITM (ViLBERT polarity) + ITC on the pooled vectors.
        let config = ViLBertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 24,
            max_position_embeddings: 16,
            v_feature_size: 10,
            v_hidden_size: 12,
            v_num_hidden_layers: 1,
            v_num_attention_heads: 2,
            v_intermediate_size: 12,
            v_biattention_id: vec![1],
            t_biattention_id: vec![1],
            v_target_size: 7,
            bi_hidden_size: 8,
            bi_num_attention_heads: 2,
            ..ViLBertConfig::default()
        };
        let model = config.init_pretraining(&device);
        let itc = ItcHead::new(
            8,
            8,
            &ItcConfig {
                embed_dim: 6,
                ..ItcConfig::default()
            },
            &device,
        );
        let feats = Tensor::<3>::random([B, V, 10], burn::tensor::Distribution::Default, &device);
        let locs = Tensor::<3>::random([B, V, 5], burn::tensor::Distribution::Default, &device);
        let out = model.forward(ViLBertInput::new(input_ids.clone(), feats, locs));
        let words = model.bert.embeddings.word_embeddings.weight.val();
        let mlm = mlm_loss(
            &model.mlm,
            out.encoder.sequence_output_t.clone(),
            words,
            &masked.positions,
            &masked.labels,
            None,
        );
        let (itm, _) = itm_loss(
            out.seq_relationship_score.clone(),
            &labels,
            Polarity::VILBERT,
        );
        let contrast = itc.forward(
            out.encoder.pooled_output_v.clone(),
            out.encoder.pooled_output_t.clone(),
        );
        // MRM: region-class KL at a few (non-global) regions against detector-style distributions.
        let targets = burn::tensor::activation::softmax(
            Tensor::<3>::random([B, V, 7], burn::tensor::Distribution::Default, &device),
            2,
        );
        let mrm = mrc_kl_loss(
            out.prediction_scores_v.clone(),
            targets,
            &[1, V + 2, 2 * V + 3],
        );
        let total = mlm.loss.loss + itm.loss + contrast.loss.loss + mrm.loss;
        finite(total.clone().into_scalar::<f32>(), "ViLBERT loss");
        let grads = total.backward();
        for (name, grad) in [
            ("mlm head", model.mlm.dense.weight.val().grad(&grads)),
            ("itm head", model.itm.classifier.weight.val().grad(&grads)),
            (
                "co-attention",
                model.bert.encoder.c_layers[0]
                    .image_to_text
                    .attention
                    .query
                    .weight
                    .val()
                    .grad(&grads),
            ),
            ("itc projection", itc.image_proj.weight.val().grad(&grads)),
            (
                "region head",
                model.region_head.decoder.weight.val().grad(&grads),
            ),
        ] {
            let g = grad.unwrap_or_else(|| panic!("[{}] no gradient for {name}", backend.name));
            finite(g.abs().sum().into_scalar::<f32>(), name);
        }

        // Single-stream: VisualBERT with MLM (masked positions of the text part) + ITM.
        let vb = VisualBertConfig {
            bert: BertConfig {
                vocab_size: 50,
                hidden_size: 16,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                intermediate_size: 24,
                max_position_embeddings: 16,
                ..BertConfig::default()
            },
            visual_embedding_dim: 10,
            ..VisualBertConfig::default()
        }
        .init_pretraining(&device);
        let regions = Tensor::<3>::random([B, V, 10], burn::tensor::Distribution::Default, &device);
        let out = vb.forward(VisualBertInput::new(input_ids, regions));
        let text = out.encoder.last_hidden_state.clone().narrow(1, 0, T);
        let words = vb.visual_bert.embeddings.text.word_embeddings.weight.val();
        let mlm = mlm_loss(
            &vb.mlm,
            text,
            words,
            &masked.positions,
            &masked.labels,
            Some(0.1),
        );
        let (itm, _) = itm_loss(out.seq_relationship_logits, &labels, Polarity::VISUAL_BERT);
        // LM: the same encoder under the unified seq2seq mask predicts each next caption token.
        let mut lm_input = VisualBertInput::new(
            Tensor::from_data(TensorData::new(raw.clone(), [B, T]), &device),
            Tensor::<3>::random([B, V, 10], burn::tensor::Distribution::Default, &device),
        );
        lm_input.mask = Some(AttentionMask::unified(
            lm_input.attention_mask.clone(),
            lm_input.visual_attention_mask.clone(),
            UnifiedMode::Seq2Seq,
            HF_MASK_VALUE,
        ));
        let lm_hidden = vb
            .visual_bert
            .forward(lm_input)
            .last_hidden_state
            .narrow(1, 0, T);
        let words = vb.visual_bert.embeddings.text.word_embeddings.weight.val();
        let lm = lm_loss(&vb.mlm, lm_hidden, words, &raw, &attention, Some(0.1));
        let total = mlm.loss.loss + itm.loss + lm.loss.loss;
        finite(total.clone().into_scalar::<f32>(), "VisualBERT loss");
        let grads = total.backward();
        for (name, grad) in [
            (
                "itm classifier",
                vb.sentence_image.classifier.weight.val().grad(&grads),
            ),
            (
                "visual projection",
                vb.visual_bert
                    .embeddings
                    .visual_projection
                    .weight
                    .val()
                    .grad(&grads),
            ),
        ] {
            let g = grad.unwrap_or_else(|| panic!("[{}] no gradient for {name}", backend.name));
            let size = finite(g.abs().sum().into_scalar::<f32>(), name);
            assert!(size > 0.0, "[{}] zero gradient for {name}", backend.name);
        }
        // Every kernel of the backward pass done before the next backend (and before the
        // process exits: lavapipe still compiling a shader then crashes in LLVM's exit-time
        // destructors).
        device.sync().unwrap();
        println!("[{}] combined steps ok", backend.name);
    }
}
