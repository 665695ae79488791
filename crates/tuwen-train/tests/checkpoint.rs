//! Checkpoints: exact resume of model + optimiser, crash fallback, mismatch errors.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::{AttentionMask, BertConfig, BertModel};
use tuwen_testkit::flex;
use tuwen_train::checkpoint;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct State {
    step: u64,
    data_position: u64,
}

fn config() -> BertConfig {
    BertConfig {
        vocab_size: 30,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 8,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::default()
    }
}

fn step(model: BertModel, optim: &mut ModuleOptimizer, i: usize) -> (BertModel, f32) {
    let device = model.devices()[0].clone();
    let ids: Vec<i64> = (0..4).map(|j| ((i * 7 + j * 3) % 29 + 1) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 4]), &device);
    let out = model.forward(
        ids.clone(),
        ids.zeros_like(),
        &AttentionMask::padding(ids.ones_like(), HF_MASK_VALUE),
    );
    let loss = out.pooler_output.sum().powf_scalar(2.0);
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optim.step(1e-2, model, grads), value)
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let device = flex().autodiff();
    device.seed(7);
    let dir = tempfile::tempdir().unwrap();
    let mut model = config().init(&device);
    let mut optim = AdamConfig::new().init();
    for i in 0..3 {
        model = step(model, &mut optim, i).0;
    }
    checkpoint::save(
        dir.path(),
        "last",
        &model,
        &optim,
        &State {
            step: 3,
            data_position: 12,
        },
    )
    .unwrap();
    let mut uninterrupted = Vec::new();
    for i in 3..6 {
        let (m, loss) = step(model, &mut optim, i);
        model = m;
        uninterrupted.push(loss);
    }

    let fresh = config().init(&device);
    let loaded = checkpoint::load::<_, State>(dir.path(), "last", fresh, AdamConfig::new().init())
        .unwrap()
        .expect("checkpoint exists");
    assert_eq!(
        loaded.state,
        State {
            step: 3,
            data_position: 12
        }
    );
    let (mut model, mut optim) = (loaded.model, loaded.optimizer);
    let mut resumed = Vec::new();
    for i in 3..6 {
        let (m, loss) = step(model, &mut optim, i);
        model = m;
        resumed.push(loss);
    }
    assert_eq!(resumed, uninterrupted, "bit-exact continuation");
}

#[test]
fn a_crash_between_the_renames_falls_back_to_the_previous_checkpoint() {
    let device = flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let model = config().init(&device);
    let optim = AdamConfig::new().init();
    checkpoint::save(
        dir.path(),
        "last",
        &model,
        &optim,
        &State {
            step: 1,
            data_position: 0,
        },
    )
    .unwrap();
    // Simulate a crash after `last` was moved aside and before the new one was renamed in.
    std::fs::rename(dir.path().join("last"), dir.path().join(".last.old")).unwrap();
    let loaded = checkpoint::load::<_, State>(
        dir.path(),
        "last",
        config().init(&device),
        AdamConfig::new().init(),
    )
    .unwrap()
    .expect("the previous checkpoint is still found");
    assert_eq!(loaded.state.step, 1);
    assert!(
        checkpoint::load::<_, State>(
            &dir.path().join("none"),
            "last",
            config().init(&device),
            AdamConfig::new().init()
        )
        .unwrap()
        .is_none()
    );
}

#[test]
fn a_checkpoint_of_another_model_is_a_clear_error() {
    let device = flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(
        dir.path(),
        "last",
        &config().init(&device),
        &AdamConfig::new().init(),
        &State {
            step: 1,
            data_position: 0,
        },
    )
    .unwrap();
    let bigger = BertConfig {
        hidden_size: 16,
        ..config()
    };
    let err = match checkpoint::load::<_, State>(
        dir.path(),
        "last",
        bigger.init(&device),
        AdamConfig::new().init(),
    ) {
        Err(e) => e,
        Ok(_) => panic!("a 16-wide model must not load an 8-wide checkpoint"),
    };
    assert!(err.to_string().contains("model.bpk"), "{err}");
}

#[test]
fn visual_bert_with_adamw_resumes_exactly() {
    use burn::optim::AdamWConfig;
    use tuwen_fusion::visual_bert::LocationEncoding;
    use tuwen_fusion::{VisualBertConfig, VisualBertForPreTraining, VisualBertInput};
    let device = flex().autodiff();
    let cfg = VisualBertConfig {
        bert: config(),
        visual_embedding_dim: 6,
        visual_location: LocationEncoding::XyxyArea5,
        ..VisualBertConfig::default()
    };
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 7, 2], [1, 4]), &device);
    let mut input = VisualBertInput::new(ids, Tensor::ones([1, 2, 6], &device));
    input.visual_locations = Some(Tensor::ones([1, 2, 5], &device));
    let step = |m: VisualBertForPreTraining, o: &mut ModuleOptimizer| {
        let loss = m
            .forward(input.clone())
            .prediction_logits
            .sum()
            .powf_scalar(2.0);
        let v = loss.clone().detach().into_scalar::<f32>();
        let g = GradientsParams::from_grads(loss.backward(), &m);
        (o.step(1e-2, m, g), v)
    };
    let mut model = cfg.init_pretraining(&device);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..2 {
        model = step(model, &mut optim).0;
    }
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(
        dir.path(),
        "last",
        &model,
        &optim,
        &State {
            step: 0,
            data_position: 0,
        },
    )
    .unwrap();
    let mut a = Vec::new();
    for _ in 0..2 {
        let (m, v) = step(model, &mut optim);
        model = m;
        a.push(v);
    }
    let loaded = checkpoint::load::<_, State>(
        dir.path(),
        "last",
        cfg.init_pretraining(&device),
        AdamWConfig::new().init(),
    )
    .unwrap()
    .unwrap();
    let (mut model, mut optim) = (loaded.model, loaded.optimizer);
    let mut b = Vec::new();
    for _ in 0..2 {
        let (m, v) = step(model, &mut optim);
        model = m;
        b.push(v);
    }
    assert_eq!(a, b);
}

#[test]
fn the_decay_set_is_the_same_after_loading() {
    let device = flex().autodiff();
    let model = config().init(&device);
    let dir = tempfile::tempdir().unwrap();
    let before = tuwen_train::decay::decayed_params(&model);
    checkpoint::save(
        dir.path(),
        "last",
        &model,
        &AdamConfig::new().init(),
        &State {
            step: 0,
            data_position: 0,
        },
    )
    .unwrap();
    let loaded = checkpoint::load::<_, State>(
        dir.path(),
        "last",
        config().init(&device),
        AdamConfig::new().init(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        tuwen_train::decay::decayed_params(&loaded.model),
        before,
        "parameter ids survive the round trip"
    );
}
