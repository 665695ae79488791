//! `[objectives]`: every pretraining objective can be switched on from a config, trains (its
//! held-out loss falls in a short run of a tiny model), is split exactly over micro-batches
//! where its loss is a mean over items, and bad combinations are refused with a clear message.

mod micro_batches;

use std::path::Path;
use std::sync::Arc;

use tuwen_testkit::flex;
use tuwen_train::batch::{REGION_CLASSES, SceneBatcher};
use tuwen_train::config::TrainConfig;
use tuwen_train::data::Data;
use tuwen_train::model::{ModelShape, PretrainModel};
use tuwen_train::pretrain::{ObjectiveWeights, run, step_batch};

/// A tiny run: `steps` steps, held-out evaluation every `every` steps, with `extra` TOML
/// appended (sections `[model]`, `[data]`, `[objectives.*]` of its own).
fn config(steps: usize, every: usize, model: &str, data: &str, objectives: &str) -> TrainConfig {
    config_lr(steps, every, 2e-3, model, data, objectives)
}

/// [`config`] at learning rate `lr`.
fn config_lr(
    steps: usize,
    every: usize,
    lr: f64,
    model: &str,
    data: &str,
    objectives: &str,
) -> TrainConfig {
    // Selected on a metric of an objective that trains (a switched-off one is refused).
    let best = if objectives.contains("[objectives.itm]\nenabled = false") {
        "mlm_color_shape_accuracy"
    } else {
        "itm_accuracy"
    };
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = {steps}
            batch_size = 12
            log_every = 1
            [optim]
            learning_rate = {lr}
            warmup_steps = 3
            decay = "constant"
            [model]
            hidden_size = 32
            v_hidden_size = 32
            layers = 2
            v_layers = 2
            co_layers = 1
            heads = 2
            {model}
            [data]
            vocab_scenes = 200
            {data}
            [eval]
            every = {every}
            scenes = 48
            retrieval_images = 0
            best = "{best}"
            {objectives}
            "#
        ),
        "objectives test",
    )
    .unwrap()
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The held-out values of `key` (`eval/...`) in step order.
fn held_out(cfg: &TrainConfig, key: &str) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    run(cfg, dir.path(), &[flex()], None, |_| {}).unwrap();
    let values: Vec<f64> = lines(dir.path())
        .iter()
        .filter_map(|v| v.get(key).and_then(|x| x.as_f64()))
        .collect();
    assert!(values.len() >= 2, "{key} logged {} times", values.len());
    assert!(values.iter().all(|v| v.is_finite()), "{key}: {values:?}");
    // The test split is logged last with the same key prefix `test/`: not read here.
    values
}

/// The first held-out values (the first evaluations, a few steps in) against the last ones:
/// the loss must fall by `margin` (a fraction of the first value, or absolute when `absolute`).
fn assert_falls(key: &str, values: &[f64], margin: f64, absolute: bool) {
    // Means of the first and last two evaluations (one evaluation is noisy).
    let n = values.len();
    let (first, last) = (
        (values[0] + values[1]) / 2.0,
        (values[n - 2] + values[n - 1]) / 2.0,
    );
    let wanted = if absolute {
        first - margin
    } else {
        first * (1.0 - margin)
    };
    eprintln!("{key}: {values:?}");
    assert!(
        last < wanted,
        "held-out {key} did not fall: first {first}, last {last} (wanted < {wanted}); {values:?}"
    );
}

/// The `[model]` lines of each encoder family: the short objective tests run on all three.
const ARCHITECTURES: [&str; 3] = [
    "architecture = \"visual_bert\"",
    "architecture = \"vilbert\"",
    "architecture = \"lxmert\"",
];

#[test]
fn mlm_trains() {
    for arch in ARCHITECTURES {
        let cfg = config(40, 4, arch, "", "[objectives.itm]\nenabled = false");
        let v = held_out(&cfg, "eval/mlm");
        assert_falls(&format!("{arch}: eval/mlm"), &v, 0.2, false);
    }
}

/// ITM alone from scratch sits on a plateau; the single stream leaves it within 150 steps, the
/// two-stream encoders (whose streams meet only in their last layers) not within 400, with or
/// without MLM (measured). ITC (its unimodal passes) takes them off it within 250, as in
/// [`itm_with_hard_negatives_trains_and_reports_hard_accuracy`].
#[test]
fn itm_with_random_negatives_trains() {
    for (arch, extra) in ARCHITECTURES
        .into_iter()
        .zip(["", "itc_dim = 16", "itc_dim = 16"])
    {
        let cfg = config(
            250,
            25,
            &format!("{arch}\n{extra}"),
            "",
            "[objectives.mlm]\nenabled = false",
        );
        let v = held_out(&cfg, "eval/itm");
        assert_falls(&format!("{arch}: eval/itm"), &v, 0.1, false);
    }
}

#[test]
fn itm_with_hard_negatives_trains_and_reports_hard_accuracy() {
    for arch in ARCHITECTURES {
        itm_with_hard_negatives(arch);
    }
}

fn itm_with_hard_negatives(arch: &str) {
    let cfg = config(
        250,
        25,
        &format!("itc_dim = 16\n{arch}"),
        "",
        "[objectives.mlm]\nenabled = false\n[objectives.itm]\nnegatives = \"hard\"",
    );
    let dir = tempfile::tempdir().unwrap();
    run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap();
    let logged = lines(dir.path());
    let itm: Vec<f64> = logged
        .iter()
        .filter_map(|v| v.get("eval/itm").and_then(|x| x.as_f64()))
        .collect();
    assert_falls(
        &format!("{arch}: eval/itm (hard negatives)"),
        &itm,
        0.1,
        false,
    );
    let hard: Vec<f64> = logged
        .iter()
        .filter_map(|v| v.get("eval/itm_hard_accuracy").and_then(|x| x.as_f64()))
        .collect();
    assert!(!hard.is_empty() && hard.iter().all(|a| (0.0..=1.0).contains(a)));
}

#[test]
fn grounding_trains() {
    for arch in ARCHITECTURES {
        grounding_trains_on(arch);
    }
}

fn grounding_trains_on(arch: &str) {
    let cfg = config(
        60,
        6,
        arch,
        "",
        "[objectives.grounding]\nenabled = true\n[objectives.itm]\nenabled = false",
    );
    let dir = tempfile::tempdir().unwrap();
    run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap();
    let logged = lines(dir.path());
    let series = |key: &str| -> Vec<f64> {
        logged
            .iter()
            .filter_map(|v| v.get(key).and_then(|x| x.as_f64()))
            .collect()
    };
    let key = format!("{arch}: eval/grounding");
    assert_falls(&key, &series("eval/grounding"), 0.1, false);
    for key in [
        "eval/grounding_accuracy",
        "eval/grounding_region_accuracy",
        "test/grounding_accuracy",
    ] {
        let v = series(key);
        eprintln!("{key}: {v:?}");
        assert!(
            !v.is_empty() && v.iter().all(|a| (0.0..=1.0).contains(a)),
            "{key}: {v:?}"
        );
    }
    assert!(!series("train/grounding").is_empty());
}

#[test]
fn wra_trains() {
    for arch in ARCHITECTURES {
        let cfg = config(
            60,
            6,
            arch,
            "",
            "[objectives.wra]\nenabled = true\nweight = 1.0\n[objectives.mlm]\nenabled = false",
        );
        let v = held_out(&cfg, "eval/wra");
        assert_falls(&format!("{arch}: eval/wra"), &v, 0.02, true);
    }
}

#[test]
fn mrfr_trains() {
    for arch in ARCHITECTURES {
        let cfg = config(
            30,
            1,
            arch,
            "region_mask_prob = 0.3",
            "[objectives.mrfr]\nenabled = true\n[objectives.itm]\nenabled = false",
        );
        let v = held_out(&cfg, "eval/mrfr");
        assert_falls(&format!("{arch}: eval/mrfr"), &v, 0.05, false);
    }
}

/// Region classification learns slowly on the scenes (90% of the masked regions are zeroed: their
/// class must come from the caption and the whole-image region), hence 1,000 steps.
#[test]
fn mrc_trains() {
    let cfg = config(
        1000,
        100,
        "architecture = \"vilbert\"",
        "region_mask_prob = 0.5",
        "",
    );
    let v = held_out(&cfg, "eval/region");
    assert_falls("eval/region", &v, 0.03, false);
}

/// The single-stream encoder classifies masked regions with its own region head (as slowly as
/// ViLBERT, above).
#[test]
fn visual_bert_mrc_trains() {
    let cfg = config(
        1000,
        100,
        "",
        "region_mask_prob = 0.5",
        "[objectives.mrc]\nenabled = true",
    );
    let v = held_out(&cfg, "eval/region");
    assert_falls("eval/region", &v, 0.03, false);
}

/// LXMERT's object head classifies masked regions (as slowly as ViLBERT's region head; held
/// out on more scenes, as the regions masked in 48 are too few to measure a small fall). Its
/// held-out loss falls steadily but slowly (2.8% in 1,000 steps after the GELU and matrix
/// product changes of issue 12 moved the rounding), so it trains 1,500.
#[test]
fn lxmert_mrc_trains() {
    let mut cfg = config(
        1500,
        150,
        "architecture = \"lxmert\"",
        "region_mask_prob = 0.5",
        "[objectives.mrc]\nenabled = true",
    );
    cfg.eval.scenes = 240;
    let v = held_out(&cfg, "eval/region");
    assert_falls("eval/region", &v, 0.03, false);
}

/// ITC from scratch sits on a plateau while the unimodal pooled vectors barely depend on the
/// input (at initialisation they differ by ~0.1%), then falls: 1,500 steps, with MLM + ITM as
/// the default run trains it (where the plateau ends depends on the dropout draws: at 1,000
/// steps one set of masks left the last two evaluations 9.98% under the first).
#[test]
fn itc_trains() {
    let cfg = config(1500, 150, "itc_dim = 16", "", "");
    let v = held_out(&cfg, "eval/itc");
    assert_falls("eval/itc", &v, 0.1, false);
}

#[test]
fn unified_lm_trains() {
    let cfg = config(
        40,
        4,
        "",
        "",
        "[objectives.lm]\nenabled = true\n[objectives.itm]\nenabled = false",
    );
    let v = held_out(&cfg, "eval/lm");
    assert_falls("eval/lm", &v, 0.2, false);
}

/// Collects every gradient of `model` in visiting order.
/// Grounding, WRA, MRFR and LM are means over items (phrases, pairs, masked regions, caption
/// tokens): a step split into micro-batches gives the whole batch's gradient and losses.
#[test]
fn the_new_objectives_split_exactly_over_micro_batches() {
    let cfg = config(
        1,
        1,
        "",
        "region_mask_prob = 0.3",
        "[objectives.grounding]\nenabled = true\n[objectives.wra]\nenabled = true\n\
         [objectives.mrfr]\nenabled = true\n[objectives.lm]\nenabled = true",
    );
    assert_splits_exactly(&cfg, true);
}

/// The same on LXMERT (no LM: the unified mask is single-stream), with its object head
/// classifying the masked regions.
#[test]
fn lxmert_objectives_split_exactly_over_micro_batches() {
    let cfg = config(
        1,
        1,
        "architecture = \"lxmert\"",
        "region_mask_prob = 0.3",
        "[objectives.grounding]\nenabled = true\n[objectives.wra]\nenabled = true\n\
         [objectives.mrfr]\nenabled = true\n[objectives.mrc]\nenabled = true",
    );
    assert_splits_exactly(&cfg, false);
}

/// Gradients and losses of one step of `cfg` as one micro-batch and as three are equal
/// (`lm`: the LM objective is on and must be non-zero).
fn assert_splits_exactly(cfg: &TrainConfig, lm: bool) {
    let scenes = tuwen_data::scene::SceneConfig::default();
    let batcher = SceneBatcher {
        tokenizer: SceneBatcher::train_tokenizer(&scenes, 1, 200, 24).unwrap(),
        scenes,
        seed: 1,
        pool: 4,
        masking: Default::default(),
        mismatch_prob: 0.5,
        region_masking: Some(tuwen_objectives::mrm::RegionMaskingConfig {
            mask_prob: 0.3,
            ..tuwen_objectives::mrm::RegionMaskingConfig::VILBERT
        }),
        scenes_per_split: 0,
        region_features: None,
        answers: None,
    };
    let shape = ModelShape {
        vocab: batcher.tokenizer.vocab_size(),
        feature_dim: batcher.feature_dim(),
        max_text_len: 24,
        answers: 0,
        region_classes: REGION_CLASSES,
    };
    let data = Data::Scenes(Arc::new(batcher));
    // The first step whose batch has phrases and masked regions.
    let host = (0..20)
        .map(|step| step_batch(&data, cfg, step).unwrap())
        .find(|h| !h.phrases.is_empty() && !h.region_positions.is_empty())
        .expect("a batch with phrases and masked regions");
    let device = flex().autodiff();
    let model = PretrainModel::init(&cfg.model, &shape, &device).with_objective_heads(
        cfg,
        shape.region_classes,
        &device,
    );
    let weights = ObjectiveWeights::from_config(cfg);
    let grads = |parts: usize| micro_batches::gradients(&model, &host, &device, parts, weights, 5);
    let (whole, a) = grads(1);
    let (split, b) = grads(3);
    assert!(
        a.grounding > 0.0 && a.mrfr > 0.0 && (a.lm > 0.0) == lm && a.wra != 0.0,
        "{a:?}"
    );
    micro_batches::assert_same_gradients(&whole, &split);
    for (x, y) in [
        (a.grounding, b.grounding),
        (a.wra, b.wra),
        (a.mrfr, b.mrfr),
        (a.lm, b.lm),
        (a.mlm, b.mlm),
        (a.itm, b.itm),
        (a.region, b.region),
    ] {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn bad_objective_configurations_are_refused_with_clear_messages() {
    let err = |text: &str| match TrainConfig::from_toml(text, "bad.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };
    let e = err("[objectives.itm]\nnegatives = \"hard\"");
    assert!(e.contains("model.itc_dim"), "{e}");
    // Mined from an ITC head nothing trains: refused.
    let e = err(
        "[model]\nitc_dim = 8\n[objectives.itm]\nnegatives = \"hard\"\n[objectives.itc]\nenabled = false",
    );
    assert!(e.contains("objectives.itc"), "{e}");
    // Selected on the accuracy of an objective that is off: refused.
    let e = err("[objectives.itm]\nenabled = false\n[eval]\nbest = \"itm_accuracy\"");
    assert!(
        e.contains("eval.best") && e.contains("objectives.itm"),
        "{e}"
    );
    // The default (mean of ITM and colour/shape MLM accuracy) with one of them off selects on
    // the other; with both off it is refused.
    for off in ["itm", "mlm"] {
        let text = format!("[objectives.{off}]\nenabled = false");
        TrainConfig::from_toml(&text, "one_off.toml").unwrap();
    }
    let e = err(
        "[objectives.itm]\nenabled = false\n[objectives.mlm]\nenabled = false\n[objectives.itc]\nenabled = true\n[model]\nitc_dim = 8",
    );
    assert!(e.contains("both off"), "{e}");
    let e = err("[objectives.mrfr]\nenabled = true");
    assert!(e.contains("data.region_mask_prob"), "{e}");
    for arch in ["vilbert", "lxmert"] {
        let e = err(&format!(
            "[model]\narchitecture = \"{arch}\"\n[objectives.lm]\nenabled = true"
        ));
        assert!(e.contains("visual_bert"), "{e}");
    }
    let e = err("[model]\narchitecture = \"lxmert\"\nco_layers = 0");
    assert!(e.contains("co_layers"), "{e}");
    let e = err("[model]\narchitecture = \"lxmert\"\ninit = \"minilm\"");
    assert!(e.contains("visual_bert only"), "{e}");
    let e = err("[objectives.wra]\nweight = -1.0");
    assert!(e.contains("objectives.wra.weight"), "{e}");
    let e = err(
        "[objectives.mlm]\nenabled = false\n[objectives.itm]\nenabled = false\n\
                 [objectives.mrc]\nenabled = false\n[objectives.itc]\nenabled = false",
    );
    assert!(e.contains("nothing would train"), "{e}");
    let e = err(
        "[objectives.grounding]\nenabled = true\n[data]\nsource = \"store\"\n\
                 captions = \"c.json\"\nstore = \"s\"",
    );
    assert!(e.contains("phrase"), "{e}");
    let e = err("[objectives.mlm]\nenable = true");
    assert!(e.contains("enable"), "{e}");
    let e = err("[objectives]\nmrm = { enabled = true }");
    assert!(e.contains("mrm"), "{e}");
    let e = err(
        "[model]\narchitecture = \"vilbert\"\nv_hidden_size = 64\n[objectives.wra]\nenabled = true",
    );
    assert!(e.contains("v_hidden_size"), "{e}");
    // MRFR makes region masking usable without ViLBERT's region head.
    TrainConfig::from_toml(
        "[data]\nregion_mask_prob = 0.15\n[objectives.mrfr]\nenabled = true",
        "ok.toml",
    )
    .unwrap();
    // The section round-trips through the resolved config.
    let cfg = TrainConfig::from_toml(
        "[model]\nitc_dim = 8\n[objectives.itm]\nnegatives = \"hard\"\nweight = 0.5",
        "ok.toml",
    )
    .unwrap();
    assert_eq!(
        TrainConfig::from_toml(&cfg.to_toml(), "resolved").unwrap(),
        cfg
    );
}

/// `mixing = "sample"`: every step trains one objective, drawn by weight (UNITER's task mix);
/// every switched-on objective is drawn, and the draws are a function of (seed, step).
#[test]
fn sampled_mixing_trains_one_objective_per_step() {
    let cfg = config(
        24,
        12,
        "",
        "",
        "[objectives]\nmixing = \"sample\"\ngrounding = { enabled = true, weight = 2.0 }",
    );
    let drawn = |dir: &Path| -> Vec<&'static str> {
        run(&cfg, dir, &[flex()], None, |_| {}).unwrap();
        lines(dir)
            .iter()
            .filter(|v| v.get("train/mlm").is_some())
            .map(|v| {
                let on: Vec<&'static str> = ["mlm", "itm", "grounding"]
                    .into_iter()
                    .filter(|k| v[format!("train/{k}")].as_f64().unwrap() != 0.0)
                    .collect();
                assert_eq!(on.len(), 1, "one objective a step: {v}");
                on[0]
            })
            .collect()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = drawn(a.path());
    assert_eq!(first.len(), 24);
    for task in ["mlm", "itm", "grounding"] {
        assert!(first.contains(&task), "{task} never drawn: {first:?}");
    }
    assert_eq!(first, drawn(b.path()), "the same draws again");
}

/// Under `mixing = "sample"` a run stopped half-way and resumed draws the same objectives and
/// logs the same values, bit for bit, as one that ran through; so does a step split into
/// micro-batches (every micro-batch trains the objective its step drew).
#[test]
fn sampled_mixing_resumes_exactly_and_splits_into_micro_batches() {
    let mut cfg = config(
        16,
        8,
        "",
        "",
        "[objectives]\nmixing = \"sample\"\ngrounding = { enabled = true, weight = 2.0 }",
    );
    let log = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let whole = tempfile::tempdir().unwrap();
    run(&cfg, whole.path(), &[flex()], None, |_| {}).unwrap();
    let resumed = tempfile::tempdir().unwrap();
    run(&cfg, resumed.path(), &[flex()], Some(8), |_| {}).unwrap();
    run(&cfg, resumed.path(), &[flex()], None, |_| {}).unwrap();
    assert_eq!(
        log(whole.path()),
        log(resumed.path()),
        "resumed == uninterrupted"
    );
    // Three micro-batches a step: the same draws (a loss is 0 on the same steps).
    cfg.run.grad_accum_steps = 3;
    let split = tempfile::tempdir().unwrap();
    run(&cfg, split.path(), &[flex()], None, |_| {}).unwrap();
    let drawn = |dir: &Path| -> Vec<Vec<bool>> {
        lines(dir)
            .iter()
            .filter(|v| v.get("train/mlm").is_some())
            .map(|v| {
                ["mlm", "itm", "grounding"]
                    .iter()
                    .map(|k| v[format!("train/{k}")].as_f64().unwrap() != 0.0)
                    .collect()
            })
            .collect()
    };
    assert_eq!(drawn(whole.path()), drawn(split.path()));
}

/// VQA as a pretraining objective (`objectives.vqa`): held-out VQA accuracy rises above where
/// the first evaluations stand (one question per scene, soft scores over the answer
/// vocabulary).
#[test]
fn vqa_trains() {
    let cfg = config(
        300,
        30,
        "",
        "",
        "[objectives.vqa]\nenabled = true\n[objectives.mlm]\nenabled = false",
    );
    let v = held_out(&cfg, "eval/vqa_accuracy");
    eprintln!("eval/vqa_accuracy: {v:?}");
    let n = v.len();
    let (first, last) = ((v[0] + v[1]) / 2.0, (v[n - 2] + v[n - 1]) / 2.0);
    assert!(last > first + 0.05, "held-out VQA accuracy {v:?}");
}

#[test]
fn objectives_vqa_and_data_vqa_weight_are_one_switch() {
    let vqa = |objectives: &str, data: &str| {
        TrainConfig::from_toml(
            &format!("[data]\n{data}\n[eval]\nbest = \"vqa_accuracy\"\n{objectives}"),
            "vqa.toml",
        )
    };
    let cfg = vqa("[objectives.vqa]\nweight = 0.5", "").unwrap();
    assert_eq!(cfg.data.vqa_weight, 0.5);
    let cfg = vqa("", "vqa_weight = 2.0").unwrap();
    assert!(
        cfg.objectives
            .vqa
            .is_some_and(|v| v.enabled && v.weight == 2.0)
    );
    let e = vqa("[objectives.vqa]\nweight = 0.5", "vqa_weight = 2.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("disagree"), "{e}");
    let e = vqa("[objectives.vqa]\nenabled = false", "vqa_weight = 2.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("objectives.vqa is off"), "{e}");
    // A configuration written with both resolved reads back the same.
    let cfg = vqa("", "vqa_weight = 2.0").unwrap();
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(TrainConfig::from_toml(&text, "again.toml").unwrap(), cfg);
}
