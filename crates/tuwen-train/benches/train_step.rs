//! The pretraining step on the built-in scenes, Flex (CPU), batch 32: building a batch on the host
//! (what a loader thread does ahead of the step) against the step itself (forward + backward of
//! every objective and the gradient sum), for the default run and the ViLBERT-style run.
//! The loader keeps up when building a batch is much cheaper than a step. (The whole optimiser
//! step, side by side with PyTorch: `cargo xtask bench`, `tests/bench_compare.rs`.)

mod workloads;

use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tuwen_train::model::PretrainModel;
use tuwen_train::pretrain::{LossWeights, step_batch, step_gradients};

fn bench(c: &mut Criterion) {
    for (name, file) in [("default", "default.toml"), ("vilbert", "vilbert.toml")] {
        let cfg = workloads::config(file);
        let (data, shape) = workloads::scene_data(&cfg);
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
