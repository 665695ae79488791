//! What the `tuwen` binary's end-to-end tests share.

#![allow(dead_code)] // each test file uses a part

use std::path::Path;
use std::process::{Command, Output};

use tuwen_data::scene::{SceneConfig, Split};

/// Every tensor of a checkpoint file (`model.bpk`) by name (the values: the file also holds
/// per-process parameter ids, so its bytes differ between two identical runs).
pub fn weights(path: &Path) -> std::collections::BTreeMap<String, burn::tensor::TensorData> {
    use burn::store::{BurnpackStore, ModuleStore, bridge};
    let mut store = BurnpackStore::from_file(path);
    store
        .get_all_tensors()
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .iter()
        .map(|(name, t)| (name.clone(), bridge::to_data(t).unwrap()))
        .collect()
}

/// The `tuwen` binary of this build.
pub fn tuwen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
}

/// Asserts that the command succeeded (showing its output if not) and returns its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pretraining run of a few seconds on the scenes.
pub const TINY_PRETRAIN: &str = r#"
[run]
steps = 10
batch_size = 6
[model]
hidden_size = 32
layers = 2
heads = 2
[data]
vocab_scenes = 200
[eval]
every = 10
scenes = 16
"#;

/// A VQA fine-tuning of a few seconds on easy-VQA (13 answers).
pub const TINY_VQA: &str = r#"
[run]
steps = 20
batch_size = 16
[optim]
learning_rate = 1e-3
warmup_steps = 2
[eval]
every = 10
scenes = 64
[finetune]
task = "vqa"
dataset = "easy_vqa"
validation_images = 20
answers = 13
"#;

/// A captioning fine-tuning of a few seconds (a 1-layer decoder).
pub const TINY_CAPTION: &str = r#"
[run]
steps = 20
batch_size = 16
[optim]
learning_rate = 2e-3
warmup_steps = 2
[eval]
every = 10
scenes = 8
[finetune]
task = "caption"
captioner = "decoder"
decoder_layers = 1
grid = 2
max_caption_len = 12
"#;

/// `n` test scenes as `0.png ..` in `dir`, with their longest captions.
pub fn scenes(dir: &Path, n: u64) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let scene = SceneConfig::default().generate(3, Split::Test, i);
            scene.image.save(dir.join(format!("{i}.png"))).unwrap();
            scene
                .captions
                .iter()
                .max_by_key(|c| c.len())
                .unwrap()
                .clone()
        })
        .collect()
}
