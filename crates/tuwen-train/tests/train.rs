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
fn decay_skips_layer_norms_biases_and_embeddings() {
    let config = tiny();
    let model = config.init(&flex());
    let ids = decayed_params(&model);
    let layer = &model.encoder.layers[0];
    assert!(ids.contains(&layer.attention.self_attn.query.weight.id));
    assert!(ids.contains(&layer.ffn.intermediate.dense.weight.id));
    assert!(ids.contains(&model.pooler.dense.weight.id));
    assert!(!ids.contains(&model.embeddings.word_embeddings.weight.id));
    assert!(!ids.contains(&layer.attention.output.layer_norm.gamma.id));
    assert!(!ids.contains(&layer.attention.self_attn.query.bias.as_ref().unwrap().id));
    // Six Linear weights per layer plus the pooler.
    assert_eq!(ids.len(), 6 * config.num_hidden_layers + 1);

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
