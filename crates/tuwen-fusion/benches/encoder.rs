//! VisualBERT encoder throughput at MiniLM size (hidden 384, 6 layers, 12 heads), 32 text tokens
//! + 36 regions, batch 32, on Flex (CPU): forward (inference) and forward + backward.

use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tuwen_fusion::{BertConfig, VisualBertConfig, VisualBertInput};

const BATCH: usize = 32;
const TEXT: usize = 32;
const REGIONS: usize = 36;
const FEATURES: usize = 1280; // MobileNetV2 feature width

fn config() -> VisualBertConfig {
    VisualBertConfig {
        bert: BertConfig {
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            ..BertConfig::default()
        },
        visual_embedding_dim: FEATURES,
        ..VisualBertConfig::default()
    }
}

fn input(device: &Device) -> VisualBertInput {
    let ids: Vec<i64> = (0..BATCH * TEXT)
        .map(|i| (i * 7919 % 30_000) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [BATCH, TEXT]), device);
    let regions = Tensor::<3>::random(
        [BATCH, REGIONS, FEATURES],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    );
    VisualBertInput::new(ids, regions)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("visual_bert_minilm_b32_t32_r36");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * (TEXT + REGIONS)) as u64));

    let device = Device::flex();
    let model = config().init(&device);
    let x = input(&device);
    group.bench_function("forward_flex", |b| {
        b.iter(|| {
            let out = model.forward(x.clone());
            out.last_hidden_state.into_data()
        })
    });

    let ad = Device::flex().autodiff();
    let model = config().init(&ad);
    let x = input(&ad);
    group.bench_function("forward_backward_flex", |b| {
        b.iter(|| {
            let out = model.forward(x.clone());
            out.pooler_output.sum().backward()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
