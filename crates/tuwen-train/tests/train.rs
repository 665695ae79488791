//! Global-norm clipping and weight-decay groups on a real encoder.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::{AttentionMask, BertConfig, BertModel};
use tuwen_testkit::flex;
use tuwen_train::clip::{clip_global_norm, global_norm};
use tuwen_train::decay::{apply_weight_decay, decayed_params};

fn tiny() -> BertConfig {
    BertConfig {
        vocab_size: 30,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 8,
        ..BertConfig::default()
    }
}

fn grads_of(model: &BertModel, scale: f32) -> GradientsParams {
    let device = model.devices()[0].clone();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 7, 2], [1, 4]), &device);
    let out = model.forward(
        ids.clone(),
        ids.zeros_like(),
        &AttentionMask::padding(ids.ones_like(), HF_MASK_VALUE),
    );
    let loss =
        out.pooler_output.sum().mul_scalar(scale) + out.last_hidden_state.powf_scalar(2.0).sum();
    GradientsParams::from_grads(loss.backward(), model)
}

#[test]
fn clipping_scales_every_gradient_to_the_global_norm() {
    let model = tiny().init(&flex().autodiff());
    let mut grads = grads_of(&model, 50.0);
    let before = global_norm(&model, &grads);
    assert!(before > 1.0, "{before}");
    let reported = clip_global_norm(&model, &mut grads, 1.0);
    assert_eq!(reported, before);
    let after = global_norm(&model, &grads);
    assert!(
        (after - 1.0).abs() < 1e-3,
        "global norm after clipping: {after}"
    );
    // Below the threshold nothing changes.
    let untouched = clip_global_norm(&model, &mut grads, 10.0);
    assert!((global_norm(&model, &grads) - untouched).abs() < 1e-6);
}

#[test]
fn decay_skips_layer_norms_and_biases_only() {
    let config = tiny();
    let model = config.init(&flex());
    let ids = decayed_params(&model);
    let layer = &model.encoder.layers[0];
    assert!(ids.contains(&layer.attention.self_attn.query.weight.id));
    assert!(ids.contains(&layer.ffn.intermediate.dense.weight.id));
    assert!(ids.contains(&model.pooler.dense.weight.id));
    // HF decays embedding tables (only biases and LayerNorm are exempt).
    assert!(ids.contains(&model.embeddings.word_embeddings.weight.id));
    assert!(ids.contains(&model.embeddings.position_embeddings.weight.id));
    assert!(!ids.contains(&model.embeddings.layer_norm.gamma.id));
    assert!(!ids.contains(&layer.attention.output.layer_norm.gamma.id));
    assert!(!ids.contains(&layer.attention.output.layer_norm.beta.as_ref().unwrap().id));
    assert!(!ids.contains(&layer.attention.self_attn.query.bias.as_ref().unwrap().id));
    // Six Linear weights per layer, the pooler and three embedding tables.
    assert_eq!(ids.len(), 6 * config.num_hidden_layers + 1 + 3);

    let before = model
        .pooler
        .dense
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let gamma_before = layer
        .attention
        .output
        .layer_norm
        .gamma
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let decayed = apply_weight_decay(model, &ids, 0.1, 0.5);
    let after = decayed
        .pooler
        .dense
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    for (a, b) in after.iter().zip(&before) {
        assert!((a - b * 0.95).abs() < 1e-7);
    }
    let gamma_after = decayed.encoder.layers[0]
        .attention
        .output
        .layer_norm
        .gamma
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_eq!(gamma_after, gamma_before);
}

/// The visual projection and location encoders are Linear layers under `embeddings`: decayed
/// (the old rule exempted every path containing "embeddings"); the ITC temperature is not.
#[test]
fn decay_covers_projections_under_embeddings_but_not_the_itc_temperature() {
    use tuwen_train::config::{Architecture, ModelConfig};
    use tuwen_train::model::{Encoder, ModelShape, PretrainModel};
    let cfg = ModelConfig {
        architecture: Architecture::VisualBert,
        hidden_size: 8,
        layers: 1,
        heads: 2,
        itc_dim: 4,
        ..ModelConfig::default()
    };
    let shape = ModelShape {
        vocab: 20,
        feature_dim: 6,
        max_text_len: 8,
        answers: 0,
        region_classes: 0,
    };
    let model = PretrainModel::init(&cfg, &shape, &flex());
    let ids = decayed_params(&model);
    let Encoder::VisualBert(m) = &model.encoder else {
        unreachable!()
    };
    let emb = &m.visual_bert.embeddings;
    assert!(ids.contains(&emb.visual_projection.weight.id));
    assert!(!ids.contains(&emb.visual_projection.bias.as_ref().unwrap().id));
    let itc = model.itc.as_ref().unwrap();
    assert!(!ids.contains(&itc.temperature.id));
    assert!(ids.contains(&itc.image_proj.weight.id));
}

/// Models trained from scratch start as HF BERT's `_init_weights` leaves them: Linear and
/// Embedding weights N(0, 0.02), biases 0, LayerNorm 1 / 0, the `[PAD]` row zero (Burn's
/// defaults: Kaiming-uniform Linear weights and biases, N(0, 1) embeddings).
#[test]
fn models_trained_from_scratch_get_bert_initialisation() {
    use tuwen_train::config::{Architecture, ModelConfig};
    use tuwen_train::model::{Encoder, ModelShape, PretrainModel};
    let read = |t: Tensor<2>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let read1 = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let std = |v: &[f32]| {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    for architecture in [
        Architecture::VisualBert,
        Architecture::Vilbert,
        Architecture::Lxmert,
    ] {
        let cfg = ModelConfig {
            architecture,
            hidden_size: 64,
            v_hidden_size: 64,
            layers: 2,
            v_layers: 2,
            co_layers: 1,
            heads: 2,
            itc_dim: 32,
            ..ModelConfig::default()
        };
        let shape = ModelShape {
            vocab: 300,
            feature_dim: 48,
            max_text_len: 16,
            answers: 10,
            region_classes: 5,
        };
        let model = PretrainModel::init(&cfg, &shape, &flex());
        let (words, query, norm) = match &model.encoder {
            Encoder::VisualBert(m) => {
                let layer = &m.visual_bert.encoder.layers[0];
                (
                    m.visual_bert.embeddings.text.word_embeddings.weight.val(),
                    layer.attention.self_attn.query.clone(),
                    layer.attention.output.layer_norm.clone(),
                )
            }
            Encoder::ViLBert(m) => {
                let layer = &m.bert.encoder.layers[0];
                (
                    m.bert.embeddings.word_embeddings.weight.val(),
                    layer.attention.self_attn.query.clone(),
                    layer.attention.output.layer_norm.clone(),
                )
            }
            Encoder::Lxmert(m) => {
                let layer = &m.lxmert.encoder.layers[0];
                (
                    m.lxmert.embeddings.word_embeddings.weight.val(),
                    layer.attention.self_attn.query.clone(),
                    layer.attention.output.layer_norm.clone(),
                )
            }
        };
        let words = read(words);
        assert!(words[..64].iter().all(|&x| x == 0.0), "[PAD] row is zero");
        let s = std(&words[64..]);
        assert!(
            (s - 0.02).abs() < 0.002,
            "{architecture:?} embedding std {s}"
        );
        let s = std(&read(query.weight.val()));
        assert!((s - 0.02).abs() < 0.003, "{architecture:?} Linear std {s}");
        assert!(read1(query.bias.unwrap().val()).iter().all(|&x| x == 0.0));
        assert!(read1(norm.gamma.val()).iter().all(|&x| x == 1.0));
        assert!(read1(norm.beta.unwrap().val()).iter().all(|&x| x == 0.0));
        let itc = model.itc.as_ref().unwrap();
        let s = std(&read(itc.image_proj.weight.val()));
        assert!((s - 0.02).abs() < 0.003, "ITC projection std {s}");
        let t = itc.temperature.val().into_scalar::<f32>();
        assert!(
            (t - 0.07).abs() < 1e-6,
            "the temperature keeps its value: {t}"
        );
    }
}
