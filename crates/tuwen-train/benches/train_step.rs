//! The pretraining step on the built-in scenes, Flex (CPU), batch 32: building a batch on the host
//! (what a loader thread does ahead of the step) against the step itself (forward + backward of
//! every objective and the gradient sum), for the default run and the ViLBERT-style run.
//! The loader keeps up when building a batch is much cheaper than a step.

use std::sync::Arc;

use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tuwen_data::scene::SceneConfig;
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_objectives::mrm::RegionMaskingConfig;
use tuwen_train::batch::{REGION_CLASSES, SceneBatcher};
use tuwen_train::config::TrainConfig;
use tuwen_train::data::Data;
use tuwen_train::model::{ModelShape, PretrainModel};
use tuwen_train::pretrain::{LossWeights, step_batch, step_gradients};

fn config(path: &str) -> TrainConfig {
    let dir = tuwen_testkit::package_path("../../configs");
    TrainConfig::load(&dir.join(path)).expect("shipped config")
}

fn batcher(cfg: &TrainConfig) -> SceneBatcher {
    let scenes = SceneConfig::default();
    let answers = (cfg.data.vqa_weight > 0.0)
        .then(|| Arc::new(SceneBatcher::answer_vocabulary(&scenes, 1, 500)));
    SceneBatcher {
        tokenizer: SceneBatcher::train_tokenizer(&scenes, 1, 500, cfg.data.max_text_len)
            .expect("scene vocabulary"),
        scenes,
        seed: 1,
        pool: cfg.data.pool,
        masking: MaskingConfig::default(),
        mismatch_prob: cfg.data.mismatch_prob,
        region_masking: (cfg.data.region_mask_prob > 0.0).then_some(RegionMaskingConfig {
            mask_prob: cfg.data.region_mask_prob,
            ..RegionMaskingConfig::VILBERT
        }),
        scenes_per_split: 0,
        region_features: None,
        answers,
    }
}

fn bench(c: &mut Criterion) {
    for (name, file) in [("default", "default.toml"), ("vilbert", "vilbert.toml")] {
        let cfg = config(file);
        let batcher = batcher(&cfg);
        let shape = ModelShape {
            vocab: batcher.tokenizer.vocab_size(),
            feature_dim: batcher.feature_dim(),
            max_text_len: cfg.data.max_text_len,
            answers: batcher.answers.as_ref().map_or(0, |a| a.len()),
            region_classes: REGION_CLASSES,
        };
        let data = Data::Scenes(Arc::new(batcher));
        let mut group = c.benchmark_group(format!("pretrain_step_{name}_b32"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(cfg.run.batch_size as u64));
        let mut step = 0;
        group.bench_function("host_batch", |b| {
            b.iter(|| {
                step += 1;
                step_batch(&data, &cfg, step).expect("batch")
            })
        });
        let ad = Device::flex().autodiff();
        let model = PretrainModel::init(&cfg.model, &shape, &ad);
        let host = step_batch(&data, &cfg, 0).expect("batch");
        let weights = LossWeights {
            region: cfg.data.region_loss_weight,
            vqa: cfg.data.vqa_weight,
        };
        group.bench_function("forward_backward", |b| {
            b.iter(|| {
                step_gradients(&model, &host, std::slice::from_ref(&ad), 1, weights, 0).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
