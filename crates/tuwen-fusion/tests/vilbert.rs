//! ViLBERT beyond reference parity (which `tuwen parity` covers on the reference fixtures).

use burn::tensor::{Int, Tensor, TensorData};
use tuwen_fusion::{ViLBertConfig, ViLBertInput};
use tuwen_testkit::{assert_close, flex};

fn small() -> ViLBertConfig {
    ViLBertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 4,
        num_attention_heads: 2,
        intermediate_size: 20,
        max_position_embeddings: 16,
        v_feature_size: 6,
        v_hidden_size: 12,
        v_num_hidden_layers: 2,
        v_num_attention_heads: 3,
        v_intermediate_size: 14,
        v_biattention_id: vec![0, 1],
        t_biattention_id: vec![2, 3],
        v_target_size: 5,
        bi_hidden_size: 12,
        bi_num_attention_heads: 2,
        ..ViLBertConfig::default()
    }
}

#[test]
fn global_image_token_is_the_mean_of_real_regions() {
    let device = flex();
    let feats = Tensor::<3>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0], [1, 3, 2]),
        &device,
    );
    let locs = Tensor::<3>::zeros([1, 3, 5], &device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1, 0], [1, 3]), &device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 3], [1, 2]), &device);
    let input = ViLBertInput::with_global_image_token(ids, feats, locs, mask);
    assert_eq!(input.image_feat.dims(), [1, 4, 2]);
    let global = input.image_feat.clone().narrow(1, 0, 1);
    let expected = Tensor::<3>::from_data(TensorData::new(vec![2.0f32, 3.0], [1, 1, 2]), &device);
    assert_close("global token", &global, &expected, 1e-6);
    let loc: Vec<f32> = input
        .image_loc
        .narrow(1, 0, 1)
        .into_data()
        .try_into_vec_as()
        .unwrap();
    assert_eq!(loc, vec![0.0, 0.0, 1.0, 1.0, 1.0]);
    let mask: Vec<i64> = input
        .image_attention_mask
        .into_data()
        .try_into_vec_as()
        .unwrap();
    assert_eq!(mask, vec![1, 1, 1, 0]);
}

#[test]
fn frozen_layers_get_no_gradient_and_the_rest_do() {
    let device = flex().autodiff();
    let config = ViLBertConfig {
        fixed_t_layer: 1,
        ..small()
    };
    let model = config.init_pretraining(&device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 7, 9, 3], [1, 4]), &device);
    let feats = Tensor::<3>::ones([1, 3, 6], &device);
    let locs = Tensor::<3>::zeros([1, 3, 5], &device);
    let out = model.forward(ViLBertInput::new(ids, feats, locs));
    let grads = out.seq_relationship_score.sum().backward();
    let layers = &model.bert.encoder.layers;
    let frozen = layers[0]
        .attention
        .self_attn
        .query
        .weight
        .val()
        .grad(&grads);
    let trained = layers[1]
        .attention
        .self_attn
        .query
        .weight
        .val()
        .grad(&grads);
    assert!(
        frozen.is_none(),
        "layer 0 is below fixed_t_layer and must not get gradient"
    );
    assert!(trained.is_some(), "layer 1 must get gradient");
    // The co-attention blocks are trained too.
    let c = &model.bert.encoder.c_layers[0];
    assert!(
        c.image_to_text
            .attention
            .query
            .weight
            .val()
            .grad(&grads)
            .is_some()
    );
}

#[test]
fn without_coattention_the_streams_are_independent() {
    let device = flex();
    let model = ViLBertConfig {
        with_coattention: false,
        ..small()
    }
    .init(&device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 7, 9, 3], [1, 4]), &device);
    let locs = Tensor::<3>::zeros([1, 3, 5], &device);
    let a = model.forward(ViLBertInput::new(
        ids.clone(),
        Tensor::ones([1, 3, 6], &device),
        locs.clone(),
    ));
    let b = model.forward(ViLBertInput::new(
        ids,
        Tensor::zeros([1, 3, 6], &device),
        locs,
    ));
    assert_close(
        "text stream",
        &a.sequence_output_t,
        &b.sequence_output_t,
        1e-6,
    );
}

#[test]
fn bad_layer_placement_is_rejected() {
    let config = ViLBertConfig {
        t_biattention_id: vec![3, 2],
        ..small()
    };
    assert!(config.validate().unwrap_err().contains("t_biattention_id"));
    let config = ViLBertConfig {
        v_biattention_id: vec![0],
        ..small()
    };
    assert!(config.validate().unwrap_err().contains("same length"));
}
