//! Captioning fine-tuning: both captioners (unified seq2seq encoder, encoder + decoder) train
//! from a pretrained run, are selected on CIDEr-D, and caption image files exactly as their
//! held-out evaluation does.

use std::path::Path;

use tuwen_data::scene::{SceneConfig, Split};
use tuwen_testkit::flex;
use tuwen_train::caption::Captioner;
use tuwen_train::config::TrainConfig;
use tuwen_train::run_dir::Which;

/// A pretraining run of a few seconds.
fn tiny_pretrain(architecture: &str) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = 10
            batch_size = 6
            [optim]
            warmup_steps = 2
            [model]
            architecture = "{architecture}"
            hidden_size = 32
            v_hidden_size = 32
            layers = 2
            v_layers = 2
            co_layers = 1
            heads = 2
            [data]
            vocab_scenes = 200
            [eval]
            every = 10
            scenes = 16
            retrieval_images = 0
            "#
        ),
        "tiny",
    )
    .unwrap()
}

fn tiny_caption(from: &Path, captioner: &str, steps: usize) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = {steps}
            batch_size = 16
            [optim]
            learning_rate = 2e-3
            warmup_steps = 5
            [data]
            vocab_scenes = 200
            [eval]
            every = {steps}
            scenes = 24
            [finetune]
            from = {from:?}
            task = "caption"
            captioner = "{captioner}"
            decoder_layers = 1
            encoder_lr_ratio = 1.0
            grid = 2
            object_boxes = 3
            max_caption_len = 16
            "#,
            from = from.display().to_string()
        ),
        "tiny_caption",
    )
    .unwrap()
}

fn pretrain(dir: &Path, architecture: &str) {
    tuwen_train::pretrain::run(&tiny_pretrain(architecture), dir, &[flex()], None, |_| {}).unwrap();
}

fn finetune(cfg: &TrainConfig, dir: &Path) -> tuwen_train::pretrain::Summary {
    tuwen_train::finetune::run(cfg, dir, &[flex()], None, |_| {})
        .unwrap()
        .0
}

#[test]
fn both_captioners_learn_the_scenes_captions_and_caption_image_files_as_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("pre");
    pretrain(&source, "visual_bert");
    for captioner in ["decoder", "unified"] {
        let dir = tmp.path().join(captioner);
        let summary = finetune(&tiny_caption(&source, captioner, 150), &dir);
        let (_, test) = summary.test.expect("the run reached its last step");
        eprintln!("{captioner}: {test:?} in {:.1} s", summary.seconds);
        // Learnt: the scenes' captions are templated, so a trained captioner gets most next
        // tokens right and writes captions that share n-grams with the references.
        assert!(
            test.lm_accuracy > 0.5,
            "{captioner}: next-token accuracy {}",
            test.lm_accuracy
        );
        assert!(test.cider > 0.3, "{captioner}: CIDEr {}", test.cider);
        let written: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("test_captions.json")).unwrap())
                .unwrap();
        assert_eq!(written.len(), 24);

        // A scene saved as a PNG file gets the caption its evaluation wrote.
        let device = flex();
        let model = Captioner::load_on(&dir, Which::Best, &device).unwrap();
        let generation = model.generation(1);
        let eval = model.evaluate_scenes(Split::Test, 3, &generation).unwrap();
        let cfg = &model.run().config;
        let scenes = SceneConfig::default();
        let images: Vec<_> = (0..3)
            .map(|i| {
                let path = tmp.path().join(format!("{captioner}-{i}.png"));
                scenes
                    .generate(cfg.run.seed, Split::Test, i)
                    .image
                    .save(&path)
                    .unwrap();
                tuwen_vision::load_rgb(&path).unwrap()
            })
            .collect();
        let captions = model.caption(&images, &generation).unwrap();
        for (row, caption) in captions.iter().enumerate() {
            assert_eq!(
                caption, &eval.results[row].caption,
                "{captioner}: scene {row}"
            );
            assert!(!caption.is_empty(), "{captioner}: empty caption");
        }
    }
}

#[test]
fn captioning_runs_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    for architecture in ["vilbert", "lxmert"] {
        let source = tmp.path().join(architecture);
        pretrain(&source, architecture);
        // The unified captioner needs one stream.
        let err = tuwen_train::finetune::run(
            &tiny_caption(&source, "unified", 2),
            &tmp.path().join(format!("{architecture}-u")),
            &[flex()],
            None,
            |_| {},
        )
        .err()
        .unwrap();
        assert!(err.contains("captioner = \"decoder\""), "{err}");
        // A two-stream run captions through a decoder.
        finetune(
            &tiny_caption(&source, "decoder", 2),
            &tmp.path().join(format!("{architecture}-d")),
        );
        // A pretraining run is not a captioner.
        let err = Captioner::load_on(&source, Which::Best, &flex())
            .err()
            .unwrap();
        assert!(err.contains("not a captioning run"), "{err}");
    }
}

/// The cached unified stepper (what `tuwen caption` decodes with) scores a caption exactly as
/// training's teacher-forced loss does: same input layout, positions, token types and mask.
#[test]
fn the_unified_stepper_scores_captions_as_training_does() {
    use tuwen_fusion::StepModel;
    use tuwen_fusion::visual_bert::CaptionRegions;
    use tuwen_train::batch::View;
    use tuwen_train::model::Encoder;

    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("pre");
    pretrain(&source, "visual_bert");
    let device = flex();
    let run = tuwen_train::model::PretrainModel::load(&source, Which::Best, &device).unwrap();
    let mut cfg = run.config.clone();
    cfg.finetune = Some(tiny_caption(&source, "unified", 2).finetune.unwrap());
    let data = tuwen_train::caption::SceneCaptions {
        scenes: SceneConfig::default(),
        seed: 3,
        scenes_per_split: 0,
        pipeline: tuwen_train::images::ImagePipeline::new(&cfg, &device).unwrap(),
        tokenizer: run.tokenizer.clone(),
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let batch = data.batch(Split::Test, &[0, 1, 2, 3], &mut rng).unwrap();
    let host = &batch.host;
    let on_device = host.to_device(&device);
    let trained = run.model.caption_loss(host, &on_device).unwrap();
    let expected = trained.loss.loss.into_scalar::<f32>();

    let Encoder::VisualBert(m) = &run.model.encoder else {
        unreachable!()
    };
    let regions = CaptionRegions::from_input(&on_device.visual_bert_input(View::Image));
    let mut stepper = m.caption_stepper(regions, true).unwrap();
    let (rows, len, vocab) = (host.rows, host.text_len, stepper.vocab());
    let parents: Vec<usize> = (0..rows).collect();
    let (mut nll, mut count) = (0.0f64, 0usize);
    for t in 0..len - 1 {
        let tokens: Vec<i64> = (0..rows).map(|r| host.caption_ids[r * len + t]).collect();
        let log_probs = stepper.step(&tokens, &parents);
        for r in 0..rows {
            if host.attention[r * len + t + 1] == 1 {
                let next = host.caption_ids[r * len + t + 1] as usize;
                nll -= log_probs[r * vocab + next] as f64;
                count += 1;
            }
        }
    }
    assert_eq!(count, trained.loss.count);
    let decoded = (nll / count as f64) as f32;
    assert!(
        (decoded - expected).abs() < 1e-4,
        "stepper {decoded} vs training {expected}"
    );
}
