//! VisualBERT beyond HF parity (which `tuwen parity` covers): BERT initialisation, tied decoder,
//! location encodings, unified masks.

use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::visual_bert::LocationEncoding;
use tuwen_fusion::{AttentionMask, BertConfig, BertModel, VisualBertConfig, VisualBertInput};
use tuwen_testkit::{assert_close, flex, skip_or_fail};

fn small() -> VisualBertConfig {
    VisualBertConfig {
        bert: BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 24,
            max_position_embeddings: 20,
            ..BertConfig::default()
        },
        visual_embedding_dim: 10,
        ..VisualBertConfig::default()
    }
}

#[test]
fn mlm_decoder_is_tied_not_copied() {
    let config = small();
    let device = flex();
    let encoder_params = config.init(&device).num_params();
    let pretraining = config.init_pretraining(&device);
    let h = config.bert.hidden_size;
    let heads = (h * h + h) + 2 * h + config.bert.vocab_size + (2 * h + 2);
    assert_eq!(
        pretraining.num_params(),
        encoder_params + heads,
        "a vocab x hidden decoder copy exists"
    );

    // Gradient of the MLM logits reaches the word embeddings through the decoder use too:
    // with the embedding input path cut (all ids hit row 0), rows other than 0 still get gradient.
    let ad = device.clone().autodiff();
    let model = config.init_pretraining(&ad);
    let ids = Tensor::<2, Int>::zeros([1, 3], &ad);
    let regions = Tensor::<3>::zeros([1, 2, 10], &ad);
    let out = model.forward(VisualBertInput::new(ids, regions));
    let grads = out.prediction_logits.narrow(2, 7, 1).sum().backward();
    let emb = model
        .visual_bert
        .embeddings
        .text
        .word_embeddings
        .weight
        .val();
    let grad = emb.grad(&grads).expect("word embeddings receive gradient");
    let row7: f32 = grad.narrow(0, 7, 1).abs().sum().into_scalar();
    assert!(
        row7 > 0.0,
        "decoder gradient did not reach the tied embedding row"
    );
}

#[test]
fn text_outputs_equal_bert_when_regions_are_masked() {
    let test = "text_outputs_equal_bert_when_regions_are_masked";
    let weights = match tuwen_assets::locate("minilm", "model.safetensors") {
        Ok(p) => p,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let device = flex();
    let dir = weights.parent().unwrap();
    let bert_config = BertConfig::from_json_file(dir.join("config.json")).unwrap();
    let bert = BertModel::from_pretrained(dir, &device).unwrap();
    let vb = VisualBertConfig {
        bert: bert_config,
        visual_embedding_dim: 24,
        ..VisualBertConfig::default()
    }
    .init(&device)
    .init_from_bert(&weights)
    .unwrap();
    // special_visual_initialize: visual tables start as copies of the text ones.
    let emb = &vb.embeddings;
    assert_close(
        "visual position table",
        &emb.visual_position_embeddings.weight.val(),
        &emb.text.position_embeddings.weight.val(),
        0.0,
    );
    assert_ne!(
        emb.visual_position_embeddings.weight.id,
        emb.text.position_embeddings.weight.id
    );

    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![101i64, 1037, 2417, 4418, 102], [1, 5]),
        &device,
    );
    let mut input = VisualBertInput::new(ids.clone(), Tensor::<3>::ones([1, 3, 24], &device));
    input.visual_attention_mask = Tensor::zeros([1, 3], &device);
    let out = vb.forward(input);
    let text = out.last_hidden_state.narrow(1, 0, 5);
    let reference = bert.forward(
        ids.clone(),
        ids.zeros_like(),
        &AttentionMask::padding(ids.ones_like(), HF_MASK_VALUE),
    );
    assert_close("text states", &text, &reference.last_hidden_state, 1e-5);
}

#[test]
fn location_encoding_changes_region_states_and_is_required() {
    let device = flex();
    let config = VisualBertConfig {
        visual_location: LocationEncoding::XyxyWhArea7,
        ..small()
    };
    let model = config.init(&device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 9, 3], [1, 3]), &device);
    let regions = Tensor::<3>::ones([1, 2, 10], &device);
    let run = |boxes: Vec<f32>| {
        let mut input = VisualBertInput::new(ids.clone(), regions.clone());
        input.visual_locations = Some(Tensor::from_data(
            TensorData::new(boxes, [1, 2, 7]),
            &device,
        ));
        model.forward(input).last_hidden_state
    };
    let a = run(vec![
        0.1, 0.1, 0.5, 0.5, 0.4, 0.4, 0.16, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    ]);
    let b = run(vec![
        0.5, 0.5, 0.9, 0.9, 0.4, 0.4, 0.16, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    ]);
    let diff = tuwen_testkit::max_abs_diff(&a, &b);
    assert!(
        diff > 1e-3,
        "moving a box did not change the states ({diff})"
    );
    let err = model
        .try_forward(VisualBertInput::new(ids.clone(), regions.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("visual_locations"), "{err}");
    let mut wrong = VisualBertInput::new(ids.clone(), Tensor::<3>::ones([1, 2, 11], &device));
    wrong.visual_locations = Some(Tensor::zeros([1, 2, 4], &device));
    let err = model.try_forward(wrong).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("visual_embedding_dim 10"), "{err}");
}

#[test]
fn full_mask_overrides_padding_masks() {
    // A seq2seq-style mask where the first text token sees only itself: its state must not depend
    // on the other tokens.
    let device = flex();
    let model = small().init(&device);
    let total = 3 + 2;
    let mut allowed = vec![true; total * total];
    allowed[1..total].fill(false);
    let mask = AttentionMask::from_allowed(
        Tensor::<3, Bool>::from_data(TensorData::new(allowed, [1, total, total]), &device),
        HF_MASK_VALUE,
    );
    let run = |ids: Vec<i64>| {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 3]), &device);
        let mut input = VisualBertInput::new(ids, Tensor::<3>::ones([1, 2, 10], &device));
        input.mask = Some(mask.clone());
        model.forward(input).last_hidden_state.narrow(1, 0, 1)
    };
    assert_close(
        "first token",
        &run(vec![2, 9, 3]),
        &run(vec![2, 17, 40]),
        1e-6,
    );
}

#[test]
fn seq2seq_mask_is_causal_on_the_caption_and_hides_it_from_regions() {
    use tuwen_fusion::UnifiedMode;
    let device = flex();
    let model = small().init(&device);
    let regions = Tensor::<3>::random([1, 2, 10], burn::tensor::Distribution::Default, &device);
    let run = |ids: Vec<i64>, mode: UnifiedMode| {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 4]), &device);
        let mask = AttentionMask::unified(
            ids.ones_like(),
            Tensor::ones([1, 2], &device),
            mode,
            HF_MASK_VALUE,
        );
        let mut input = VisualBertInput::new(ids, regions.clone());
        input.mask = Some(mask);
        model.forward(input).last_hidden_state
    };
    let a = run(vec![2, 9, 11, 3], UnifiedMode::Seq2Seq);
    let b = run(vec![2, 9, 30, 40], UnifiedMode::Seq2Seq); // tokens 2.. differ
    // Caption positions 0 and 1 only see tokens 0..=1 and the regions.
    assert_close(
        "caption prefix",
        &a.clone().narrow(1, 0, 2),
        &b.clone().narrow(1, 0, 2),
        1e-6,
    );
    // Regions (positions 4, 5) never see the caption.
    assert_close(
        "regions",
        &a.clone().narrow(1, 4, 2),
        &b.clone().narrow(1, 4, 2),
        1e-6,
    );
    // A later caption position does see the changed tokens.
    assert!(tuwen_testkit::max_abs_diff(&a.clone().narrow(1, 3, 1), &b.narrow(1, 3, 1)) > 1e-3);
    // In bidirectional mode the prefix depends on the later tokens too.
    let c = run(vec![2, 9, 11, 3], UnifiedMode::Bidirectional);
    let d = run(vec![2, 9, 30, 40], UnifiedMode::Bidirectional);
    assert!(tuwen_testkit::max_abs_diff(&c.narrow(1, 0, 1), &d.narrow(1, 0, 1)) > 1e-3);
}
