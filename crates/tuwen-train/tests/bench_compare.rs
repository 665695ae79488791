//! tuwen's side of `cargo xtask bench`: the work the PyTorch reference
//! (`xtask/bench/torch_bench.py`) repeats, measured on Flex in the test profile (the test
//! suite's build: no second Burn build). Each test measures one work — median milliseconds per
//! iteration after a warm-up — prints it as one JSON line (`{"side":"tuwen","work":...}`) and
//! exports its batch and configuration for the reference to `$TUWEN_BENCH_DIR/<work>/`
//! (`meta.json`, `features.f32`, `locations.f32`). Ignored by default (minutes of CPU):
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo test --workspace --test bench_compare -- --ignored --nocapture --test-threads=1
//! ```
//!
//! `TUWEN_BENCH_ITERS` / `TUWEN_BENCH_WARMUP` override each work's counts (the reference reads
//! the counts tuwen used from `meta.json`); `TUWEN_BENCH_BACKEND=ndarray` runs the works on
//! Burn's ndarray backend instead of Flex.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use tuwen_fusion::precision::Precision;
use tuwen_train::batch::View;
use tuwen_train::model::Encoder;
use workloads::TrainStep;

/// Where the batches for the reference go.
fn bench_dir(work: &str) -> PathBuf {
    std::env::var_os("TUWEN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench"))
        .join(work)
}

/// `(warm-up, timed)` iterations: the work's defaults unless the environment sets them.
fn counts(warmup: usize, iters: usize) -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("TUWEN_BENCH_WARMUP", warmup),
        var("TUWEN_BENCH_ITERS", iters).max(1),
    )
}

/// The CPU backend the works run on: Flex unless `TUWEN_BENCH_BACKEND=ndarray` (to compare
/// Burn's CPU backends on the same work; `cargo xtask bench` measures Flex, tuwen's default).
fn backend() -> (Device, &'static str) {
    match std::env::var("TUWEN_BENCH_BACKEND").as_deref() {
        #[allow(deprecated)]
        Ok("ndarray") => (Device::ndarray(), "ndarray"),
        Ok("flex") | Err(_) => (Device::flex(), "flex"),
        Ok(other) => panic!("TUWEN_BENCH_BACKEND={other}: expected flex or ndarray"),
    }
}

/// Threads of the rayon pool Flex computes on.
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `f` `warmup` times, then `iters` timed times, and prints the work's JSON line (with
/// the first call's value as `first_loss` when `f` returns the step's loss).
fn measure(
    work: &str,
    loss: bool,
    what: &str,
    params: usize,
    (warmup, iters): (usize, usize),
    mut f: impl FnMut() -> f32,
) {
    let first = f();
    for _ in 1..warmup {
        f();
    }
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let mut line = serde_json::json!({
            "side": "tuwen",
            "work": work,
            "what": what,
            "ms": median,
            "min_ms": ms[0],
            "max_ms": ms[n - 1],
            "warmup": warmup.max(1),
            "iters": iters,
            "threads": threads(),
            "params": params,
            "backend": backend().1,
    });
    if loss {
        line["first_loss"] = first.into();
    }
    // On a line of its own: libtest prints `test NAME ... ` before a test's output.
    println!("\n{line}");
}

/// The default run's whole optimiser step (`configs/default.toml`: VisualBERT 128 x 4, 4 heads,
/// MLM + ITM, AdamW, global-norm clipping) on a batch of 32 scenes.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn default_step() {
    default_run_step("default-step", Precision::F32);
}

/// The same step with `[run] precision = "bf16"` (the reference under bf16 autocast).
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn default_step_bf16() {
    default_run_step("default-step-bf16", Precision::Bf16);
}

fn default_run_step(work: &str, precision: Precision) {
    let ad = backend().0.autodiff();
    let (mut cfg, model, host, shape) = workloads::default_run(&ad);
    cfg.run.precision = precision;
    let encoder = workloads::encoder_config(&cfg, &shape, None);
    let what = format!(
        "default run's whole step{}: {}x{}, {} heads, B{} x (T{} + R{} x {}-d), MLM + ITM, AdamW, clip",
        precision_note(precision, &ad),
        cfg.model.hidden_size,
        cfg.model.layers,
        cfg.model.heads,
        host.rows,
        host.text_len,
        host.regions,
        host.feature_dim,
    );
    let params = workloads::params(&model);
    let counts = counts(5, 40);
    workloads::export(
        &bench_dir(work),
        work,
        &what,
        step_kind(precision),
        &encoder,
        &cfg,
        &host,
        params,
        counts.0.max(1),
        counts.1,
    );
    let mut step = TrainStep::new(&cfg, model, ad);
    measure(work, true, &what, params, counts, || step.run(&host).1);
}

/// The reference's kind of a training step in `precision` (`step-bf16`: under bf16 autocast).
fn step_kind(precision: Precision) -> &'static str {
    match precision {
        Precision::F32 => "step",
        Precision::Bf16 => "step-bf16",
    }
}

/// What a work's line says of its precision (and whether bf16 runs on this machine at all).
fn precision_note(precision: Precision, device: &Device) -> &'static str {
    match precision {
        Precision::F32 => "",
        Precision::Bf16 if precision.check(device).is_ok() => " in bf16",
        Precision::Bf16 => {
            eprintln!("bf16 is not available here: the step runs in f32");
            " in bf16 (NOT AVAILABLE HERE: ran f32)"
        }
    }
}

/// `visualbert-minilm`'s whole optimiser step: MiniLM-L6-H384 VisualBERT (12 heads, dropout
/// 0.1), 32 x (32 tokens + 36 regions of 2048-d), MLM 15% + ITM, AdamW, global-norm clipping.
/// (`cargo xtask bench --torch-bf16` also measures the reference under bf16 autocast.)
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_step() {
    minilm_step("visualbert-minilm-step", Precision::F32);
}

/// The same step with `[run] precision = "bf16"` (the reference under bf16 autocast).
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_step_bf16() {
    minilm_step("visualbert-minilm-step-bf16", Precision::Bf16);
}

fn minilm_step(work: &str, precision: Precision) {
    let ad = backend().0.autodiff();
    let (mut cfg, model, host, spec) = workloads::minilm_run(&ad);
    cfg.run.precision = precision;
    let encoder = workloads::encoder_config(&cfg, &spec.shape, spec.bert.clone());
    let what = format!(
        "visualbert-minilm whole step{}: 384x6, 12 heads, B32 x (T32 + R36 x 2048-d), \
         MLM 15% + ITM, AdamW, clip, dropout 0.1",
        precision_note(precision, &ad)
    );
    let params = workloads::params(&model);
    let counts = counts(2, 5);
    workloads::export(
        &bench_dir(work),
        work,
        &what,
        step_kind(precision),
        &encoder,
        &cfg,
        &host,
        params,
        counts.0.max(1),
        counts.1,
    );
    let mut step = TrainStep::new(&cfg, model, ad);
    measure(work, true, &what, params, counts, || step.run(&host).1);
}

/// The `visualbert-minilm` encoder's forward pass for inference (plain Flex device: no
/// autodiff, no dropout) on the same batch: text + regions in, hidden states and pooled vector
/// out, the hidden states read back to the host.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_forward() {
    minilm_forward(
        "visualbert-minilm-forward",
        false,
        "encoder forward (inference): visualbert-minilm, B32 x (T32 + R36 x 2048-d)",
    );
}

/// The same forward with the linear layers in bf16 (`tuwen_fusion::precision::with_bf16`;
/// the reference runs under `torch.autocast("cpu", torch.bfloat16)`). On a CPU without
/// AVX512-BF16 tuwen's scope changes nothing: the line then says `"bf16": false`.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_forward_bf16() {
    minilm_forward(
        "visualbert-minilm-forward-bf16",
        true,
        "encoder forward (inference), linear layers in bf16: visualbert-minilm, B32 x (T32 + R36 x 2048-d)",
    );
}

fn minilm_forward(work: &str, bf16: bool, what: &str) {
    let device = backend().0;
    let (cfg, model, host, spec) = workloads::minilm_run(&device);
    let encoder = workloads::encoder_config(&cfg, &spec.shape, spec.bert.clone());
    let Encoder::VisualBert(model) = model.encoder else {
        panic!("visualbert-minilm is a VisualBERT");
    };
    let model = model.visual_bert;
    let params = workloads::params(&model);
    let counts = counts(2, 10);
    let kind = if bf16 { "forward-bf16" } else { "forward" };
    workloads::export(
        &bench_dir(work),
        work,
        what,
        kind,
        &encoder,
        &cfg,
        &host,
        params,
        counts.0.max(1),
        counts.1,
    );
    if bf16 && !tuwen_fusion::precision::bf16_supported(&device) {
        eprintln!("{work}: this CPU lacks AVX512-BF16: the linear layers run in f32");
    }
    let input = host.to_device(&device).visual_bert_input(View::Joint);
    let forward = || {
        let out = model.forward(input.clone());
        let hidden = out.last_hidden_state.into_data();
        let _pooled = out.pooler_output.into_data();
        hidden.as_slice::<f32>().map_or(0.0, |v| v[0])
    };
    measure(work, false, what, params, counts, || {
        if bf16 {
            tuwen_fusion::precision::with_bf16(forward)
        } else {
            forward()
        }
    });
}

/// Answers of a VQA v2 answer vocabulary (the size of the answer head in the answer works).
const VQA_ANSWERS: usize = 3129;

/// `tuwen vqa`'s work for one question: the `visualbert-minilm` encoder over one row (32
/// tokens + 36 regions of 2048-d) and a VQA answer head (`AnswerHead`: 384 -> 768 -> GELU ->
/// LayerNorm -> 3,129 answers), the batch uploaded and the sigmoid scores read back — the
/// latency of answering one question. The reference: `VisualBertModel` and the same head in
/// PyTorch modules, in eval mode under `torch.inference_mode()`.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_answer() {
    minilm_answer("visualbert-minilm-answer", Precision::F32);
}

/// The same answer with the linear layers in bf16 (`tuwen vqa --precision bf16`; the
/// reference under `torch.autocast("cpu", torch.bfloat16)`).
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn visualbert_minilm_answer_bf16() {
    minilm_answer("visualbert-minilm-answer-bf16", Precision::Bf16);
}

fn minilm_answer(work: &str, precision: Precision) {
    let device = backend().0;
    let (cfg, mut model, host, spec) = workloads::minilm_run(&device);
    let encoder = workloads::encoder_config(&cfg, &spec.shape, spec.bert.clone());
    let hidden = encoder.bert.hidden_size;
    model.vqa = Some(tuwen_fusion::lxmert::AnswerHead::new(
        hidden,
        VQA_ANSWERS,
        &device,
    ));
    let question = host.split(host.rows).remove(0);
    let Encoder::VisualBert(visual_bert) = &model.encoder else {
        panic!("visualbert-minilm is a VisualBERT");
    };
    let params = workloads::params(&visual_bert.visual_bert) + workloads::params(&model.vqa);
    let what = format!(
        "one VQA answer{}: visualbert-minilm encoder + answer head (3,129), 1 x (T32 + R36 x 2048-d)",
        precision_note(precision, &device)
    );
    let counts = counts(3, 30);
    let kind = match precision {
        Precision::F32 => "answer",
        Precision::Bf16 => "answer-bf16",
    };
    let dir = bench_dir(work);
    workloads::export(
        &dir,
        work,
        &what,
        kind,
        &encoder,
        &cfg,
        &question,
        params,
        counts.0.max(1),
        counts.1,
    );
    workloads::add_meta(&dir, "answers", VQA_ANSWERS.into());
    // One scope for every question, as `tuwen vqa` and the server's workers answer.
    precision.run(|| {
        measure(work, false, &what, params, counts, || {
            let scores = model
                .answer_scores(&question.to_device(&device))
                .expect("answer scores");
            scores[0]
        })
    });
}

/// `tuwen extract-regions`'s per-image work on four real photos (the `photos` asset: coffee,
/// chelsea, motorcycle_left, rocket; decoded before timing): resize to a shorter side of 448,
/// the ImageNet MobileNetV2's feature map, RoIAlign 7 x 7 of the ~190 detector-free proposals,
/// the classifier on every proposal, NMS 0.5, 36 kept. The reference repeats it with
/// torchvision's `mobilenet_v2` (the same weights file), `roi_align` and `nms` on the same
/// proposals.
#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn extract_regions() {
    use tuwen_regions::{ExtractorConfig, RegionExtractor};
    let work = "extract-regions";
    let (weights, photos) = match (
        tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors"),
        tuwen_assets::locate("photos", "coffee.png"),
    ) {
        (Ok(w), Ok(p)) => (w, p.parent().expect("a directory").to_path_buf()),
        (Err(e), _) | (_, Err(e)) => panic!("{work} needs the assets (cargo xtask assets): {e}"),
    };
    let device = backend().0;
    let backbone =
        tuwen_vision::Backbone::from_torchvision("mobilenet_v2", &weights, 1000, &device)
            .expect("the MobileNetV2 asset");
    let config = ExtractorConfig::default();
    let files = [
        "coffee.png",
        "chelsea.png",
        "motorcycle_left.png",
        "rocket.jpg",
    ];
    let images: Vec<_> = files
        .iter()
        .map(|f| tuwen_vision::load_rgb(photos.join(f)).expect("a photo"))
        .collect();
    let described: Vec<serde_json::Value> = files
        .iter()
        .zip(&images)
        .map(|(file, image)| {
            let (w, h) = image.dimensions();
            let resized = tuwen_vision::Preprocess::resize_shorter(image, config.shorter_side);
            let proposals = config.proposals.propose(w as f32, h as f32);
            serde_json::json!({
                "file": photos.join(file),
                "size": [w, h],
                "resized": [resized.width(), resized.height()],
                "proposals": proposals.iter().map(|b| [b.x1, b.y1, b.x2, b.y2]).collect::<Vec<_>>(),
            })
        })
        .collect();
    let counts = counts(1, 5);
    let what = "region extraction of 4 photos (MobileNetV2, RoIAlign 7x7 of ~190 proposals, classifier, NMS, 36 kept)";
    let dir = bench_dir(work);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let meta = serde_json::json!({
        "work": work,
        "what": what,
        "kind": "extract",
        "warmup": counts.0.max(1),
        "iters": counts.1,
        "weights": weights,
        "images": described,
        "config": {
            "shorter_side": config.shorter_side,
            "max_regions": config.max_regions,
            "nms_iou": config.nms_iou,
            "pool_size": config.pool_size,
            "sampling_ratio": config.sampling_ratio,
            "mean": config.normalization.mean,
            "std": config.normalization.std,
        },
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).expect("meta.json");
    let params = match &backbone {
        tuwen_vision::Backbone::MobileNetV2(m) => workloads::params(m.as_ref()),
        tuwen_vision::Backbone::ResNet(m) => workloads::params(m.as_ref()),
    };
    let extractor = RegionExtractor::new(backbone, config);
    measure(work, false, what, params, counts, || {
        let regions: usize = images
            .iter()
            .map(|image| extractor.extract(image, None, &device).len())
            .sum();
        regions as f32
    });
}
