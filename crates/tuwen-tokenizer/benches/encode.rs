//! Batch-encoding throughput (tokens per second) of the BERT tokenizer.
//!
//! Uses the real bert-base-uncased vocabulary (`cargo xtask assets`); without it, a vocabulary
//! trained on the same captions (printed, so numbers are never mixed up).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions, TrainOptions};

fn captions(n: usize) -> Vec<String> {
    let colours = [
        "red", "green", "blue", "yellow", "purple", "orange", "gray", "brown",
    ];
    let shapes = ["circle", "square", "triangle", "rectangle", "star"];
    let scenes = [
        "on a wooden table next to the window",
        "in the middle of a crowded street at night",
        "partially hidden behind a much larger object",
        "",
    ];
    (0..n)
        .map(|i| {
            format!(
                "A {} {} left of two {} {}s {}.",
                colours[i % 8],
                shapes[i % 5],
                colours[(i / 8) % 8],
                shapes[(i / 5) % 5],
                scenes[i % 4]
            )
        })
        .collect()
}

fn tokenizer(corpus: &[String]) -> BertTokenizer {
    let options = TokenizerOptions::default().with_max_len(64);
    match tuwen_assets::locate("minilm", "vocab.txt") {
        Ok(vocab) => {
            eprintln!(
                "encode bench: bert-base-uncased vocab ({})",
                vocab.display()
            );
            BertTokenizer::from_vocab(vocab, options).expect("vocab loads")
        }
        Err(e) => {
            eprintln!("encode bench: {e}; using a vocabulary trained on the bench captions");
            let train = TrainOptions {
                vocab_size: 2_000,
                ..TrainOptions::default()
            };
            BertTokenizer::train(corpus.iter(), &train, options).expect("training succeeds")
        }
    }
}

fn bench(c: &mut Criterion) {
    let corpus = captions(1_024);
    let tok = tokenizer(&corpus);
    let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let tokens: usize = tok
        .encode_batch(&texts)
        .unwrap()
        .iter()
        .map(|e| e.len())
        .sum();
    let mut group = c.benchmark_group("tokenizer");
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("encode_batch_1024_captions", |b| {
        b.iter(|| tok.encode_batch(&texts).unwrap())
    });
    let device = burn::tensor::Device::flex();
    group.bench_function("batch_to_tensors_1024_captions", |b| {
        b.iter(|| tok.batch(&texts, &device).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
