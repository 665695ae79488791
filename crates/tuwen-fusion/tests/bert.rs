//! BERT encoder: agreement across backends, and parity with HF transformers on real weights.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::weights::read_tensors;
use tuwen_fusion::{AttentionMask, BertConfig, BertModel, LoadError};
use tuwen_testkit::{assert_close, devices, flex, max_abs_diff, skip_or_fail};

/// Tolerance for the same weights on two backends (f32, different kernels and summation orders).
const BACKEND_TOL: f32 = 1e-4;
/// Tolerance against HF transformers (PyTorch CPU, f32).
const HF_TOL: f32 = 1e-4;

fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 97,
        hidden_size: 40, // 5 heads of 8: an odd head count
        num_hidden_layers: 2,
        num_attention_heads: 5,
        intermediate_size: 72,
        max_position_embeddings: 32,
        ..BertConfig::default()
    }
}

fn ints(data: Vec<i64>, shape: [usize; 2], device: &burn::tensor::Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn same_weights_same_outputs_on_every_backend() {
    let reference_device = flex();
    let model = tiny_config().init(&reference_device);
    // Two sequences, the second padded after 4 tokens.
    let ids = vec![2, 15, 33, 7, 90, 3, 2, 41, 8, 3, 0, 0];
    let types = vec![0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0];
    let mask = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    let run = |model: &BertModel, device: &burn::tensor::Device| {
        let m = AttentionMask::padding(ints(mask.clone(), [2, 6], device), HF_MASK_VALUE);
        model.forward(
            ints(ids.clone(), [2, 6], device),
            ints(types.clone(), [2, 6], device),
            &m,
        )
    };
    let expected = run(&model, &reference_device);
    let backends = devices("same_weights_same_outputs_on_every_backend");
    assert!(backends.len() >= 2, "need at least two backends to compare");
    for backend in backends {
        let moved = model.clone().to_device(&backend.device);
        let out = run(&moved, &backend.device);
        let hidden = Tensor::<3>::from_data(out.last_hidden_state.to_data(), &reference_device);
        let pooled = Tensor::<2>::from_data(out.pooler_output.to_data(), &reference_device);
        println!(
            "{}: last_hidden_state {:e}, pooler_output {:e}",
            backend.name,
            max_abs_diff(&hidden, &expected.last_hidden_state),
            max_abs_diff(&pooled, &expected.pooler_output)
        );
        assert_close(
            &format!("{} last_hidden_state", backend.name),
            &hidden,
            &expected.last_hidden_state,
            BACKEND_TOL,
        );
        assert_close(
            &format!("{} pooler_output", backend.name),
            &pooled,
            &expected.pooler_output,
            BACKEND_TOL,
        );
    }
}

#[test]
fn minilm_matches_hf_transformers_on_real_sentences() {
    let test = "minilm_matches_hf_transformers_on_real_sentences";
    let dir = match tuwen_assets::locate("minilm", "model.safetensors") {
        Ok(p) => p.parent().unwrap().to_path_buf(),
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    let fixture = read_tensors(&tuwen_testkit::package_path(
        "tests/fixtures/minilm_reference.safetensors",
    ))
    .unwrap();
    for backend in devices(test) {
        let device = &backend.device;
        let model = BertModel::from_pretrained(&dir, device).unwrap();
        let int = |name: &str| Tensor::<2, Int>::from_data(fixture[name].clone(), device);
        let mask = AttentionMask::padding(int("attention_mask"), HF_MASK_VALUE);
        let out = model.forward(int("input_ids"), int("token_type_ids"), &mask);
        let hidden = Tensor::<3>::from_data(fixture["last_hidden_state"].clone(), device);
        let pooled = Tensor::<2>::from_data(fixture["pooler_output"].clone(), device);
        println!(
            "{}: last_hidden_state {:e}, pooler_output {:e}",
            backend.name,
            max_abs_diff(&out.last_hidden_state, &hidden),
            max_abs_diff(&out.pooler_output, &pooled)
        );
        assert_close(
            &format!("{} last_hidden_state", backend.name),
            &out.last_hidden_state,
            &hidden,
            HF_TOL,
        );
        assert_close(
            &format!("{} pooler_output", backend.name),
            &out.pooler_output,
            &pooled,
            HF_TOL,
        );
    }
}

#[test]
fn mismatched_checkpoint_names_the_tensors() {
    let test = "mismatched_checkpoint_names_the_tensors";
    let path = match tuwen_assets::locate("minilm", "model.safetensors") {
        Ok(p) => p,
        Err(e) => return skip_or_fail(test, &e.to_string()),
    };
    // MiniLM with one layer too many and a different feed-forward width.
    let config = BertConfig {
        hidden_size: 384,
        num_hidden_layers: 7,
        intermediate_size: 1024,
        ..BertConfig::default()
    };
    let err = config.init(&flex()).load_hf_safetensors(&path).unwrap_err();
    let LoadError::Mismatch { details, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert!(
        details.contains("missing from checkpoint: encoder.layers.6."),
        "missing layer not reported: {details}"
    );
    assert!(
        details.to_lowercase().contains("shape"),
        "shape mismatch not reported: {details}"
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap();
    let err = BertConfig::from_json_file(&path).unwrap_err();
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("multiple"),
        "{err}"
    );
    std::fs::write(&path, r#"{"hidden_act": "relu"}"#).unwrap();
    let err = BertConfig::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("relu"), "{err}");
    std::fs::write(&path, "{ truncated").unwrap();
    assert!(matches!(
        BertConfig::from_json_file(&path),
        Err(LoadError::Config { .. })
    ));
}
