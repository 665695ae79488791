//! Fine-tuning: a pretrained run becomes a VQA model through one loading path
//! (`PretrainModel::load`), with a reuse report, soft targets, frozen layers, resumable runs and
//! clear errors for runs that cannot be loaded.

use std::collections::HashSet;
use std::path::Path;

use tuwen_testkit::flex;
use tuwen_train::config::TrainConfig;
use tuwen_train::finetune::{Reuse, frozen, is_core};
use tuwen_train::model::PretrainModel;
use tuwen_train::pretrain::Event;
use tuwen_train::run_dir::Which;
use tuwen_train::vqa::{Vqa, VqaExample, answer_vocabulary, targets};

/// A pretraining run of a few seconds, with an ITC head (which VQA drops).
fn tiny_pretrain() -> TrainConfig {
    TrainConfig::from_toml(
        r#"
        [run]
        steps = 10
        batch_size = 6
        [optim]
        warmup_steps = 2
        [model]
        hidden_size = 32
        layers = 2
        heads = 2
        itc_dim = 16
        [data]
        vocab_scenes = 200
        [eval]
        every = 10
        scenes = 16
        retrieval_images = 0
        "#,
        "tiny",
    )
    .unwrap()
}

fn tiny_vqa(from: &Path, dataset: &str) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = 12
            batch_size = 8
            [optim]
            learning_rate = 1e-3
            warmup_steps = 2
            [data]
            vocab_scenes = 200
            [eval]
            every = 6
            scenes = 24
            [finetune]
            from = {from:?}
            dataset = "{dataset}"
            validation_images = 20
            answers = 13
            freeze_layers = 1
            "#,
            from = from.display().to_string()
        ),
        "tiny_vqa",
    )
    .unwrap()
}

fn pretrain(dir: &Path) {
    tuwen_train::pretrain::run(&tiny_pretrain(), dir, &[flex()], None, |_| {}).unwrap();
}

#[test]
fn soft_targets_follow_the_official_vqa_accuracy() {
    let vocab = [("two", 0u32), ("three", 1), ("four", 2), ("five", 3)]
        .into_iter()
        .map(|(a, i)| (a.to_string(), i))
        .collect();
    // 10 annotators: 1 says "two", 2 "three", 3 "four", 4 "five".
    let answers: Vec<String> = [
        "two", "three", "three", "four", "four", "four", "five", "five", "five", "five",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut t = targets(&answers, &vocab);
    t.sort_by_key(|&(i, _)| i);
    let expected = [(0, 0.3), (1, 0.6), (2, 0.9), (3, 1.0)];
    assert_eq!(t.len(), 4);
    for ((i, s), (ei, es)) in t.iter().zip(expected) {
        assert_eq!(*i, ei);
        assert!((s - es).abs() < 1e-6, "answer {i}: {s} != {es}");
    }
    // Single-answer sets: the one answer scores 1; answers outside the vocabulary are dropped.
    assert_eq!(targets(&["five".to_string()], &vocab), vec![(3, 1.0)]);
    assert!(targets(&["six".to_string()], &vocab).is_empty());
}

#[test]
fn the_answer_vocabulary_is_the_most_frequent_training_answers() {
    let example = |answers: &[&str]| VqaExample {
        image: 0,
        question: "q".into(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
        question_id: "0".into(),
    };
    let examples = [example(&["b", "a"]), example(&["b", "c"]), example(&["c"])];
    assert_eq!(answer_vocabulary(&examples, 2), ["b", "c"]);
}

#[test]
fn frozen_layers_are_the_embeddings_and_the_first_layers() {
    let layer = |i: usize| {
        format!("encoder.VisualBert.visual_bert.encoder.layers.{i}.attention.query.weight")
    };
    assert!(frozen(
        "encoder.VisualBert.visual_bert.embeddings.text.word_embeddings.weight",
        1
    ));
    assert!(frozen(&layer(0), 1));
    assert!(!frozen(&layer(1), 1));
    assert!(!frozen(&layer(0), 0));
    assert!(!frozen("vqa.classifier.weight", 4));
}

fn reuse(dir: &Path) -> Reuse {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reuse.json")).unwrap()).unwrap();
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    Reuse {
        from: v["from"].as_str().map(str::to_string),
        reused: list("reused"),
        kept: list("kept"),
        resized: list("resized"),
        new: list("new"),
        dropped: list("dropped"),
    }
}

#[test]
fn fine_tuning_reuses_the_encoder_adds_new_heads_and_drops_the_rest_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (pre, fine) = (tmp.path().join("pre"), tmp.path().join("vqa"));
    pretrain(&pre);
    let cfg = tiny_vqa(&pre, "scenes");
    // Stopped half-way, then resumed: the same run as an uninterrupted one.
    tuwen_train::finetune::run(&cfg, &fine, &[flex()], Some(6), |_| {}).unwrap();
    let mut notes = Vec::new();
    let (summary, _) = tuwen_train::finetune::run(&cfg, &fine, &[flex()], None, |e| {
        if let Event::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert!(notes.iter().any(|n| n.contains("resuming")), "{notes:?}");
    assert_eq!(summary.steps, 12);
    let whole = tmp.path().join("whole");
    let (uninterrupted, _) =
        tuwen_train::finetune::run(&cfg, &whole, &[flex()], None, |_| {}).unwrap();
    assert_eq!(summary.eval, uninterrupted.eval);

    let r = reuse(&fine);
    assert!(r.from.unwrap().contains("best checkpoint"));
    assert!(
        !r.reused.is_empty() && r.reused.iter().all(|n| is_core(n)),
        "{:?}",
        r.reused
    );
    // The MLM and ITM heads ride along unchanged.
    assert!(
        !r.kept.is_empty()
            && r.kept
                .iter()
                .all(|n| n.starts_with("encoder.") && !is_core(n)),
        "{:?}",
        r.kept
    );
    assert!(
        !r.new.is_empty() && r.new.iter().all(|n| n.starts_with("vqa.")),
        "{:?}",
        r.new
    );
    assert!(
        !r.dropped.is_empty() && r.dropped.iter().all(|n| n.starts_with("itc.")),
        "{:?}",
        r.dropped
    );
    // Every tensor of the pretrained encoder is reused with its value.
    let source = PretrainModel::load(&pre, Which::Best, &flex()).unwrap();
    let tuned = PretrainModel::load(&fine, Which::Best, &flex()).unwrap();
    let names: HashSet<&String> = r.reused.iter().collect();
    assert_eq!(names.len(), r.reused.len());
    assert!(tuned.model.vqa.is_some() && tuned.model.itc.is_none());
    assert_eq!(
        tuned.answers.len(),
        tuned.model.vqa.as_ref().unwrap().classifier.weight.dims()[1]
    );
    // The frozen embeddings did not move.
    let word = |m: &PretrainModel| match &m.encoder {
        tuwen_train::model::Encoder::VisualBert(v) => v
            .visual_bert
            .embeddings
            .text
            .word_embeddings
            .weight
            .val()
            .into_data(),
        _ => unreachable!(),
    };
    assert_eq!(word(&source.model), word(&tuned.model));
    assert!(summary.eval.vqa_accuracy > 0.0);
}

#[test]
fn runs_that_cannot_be_loaded_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = PretrainModel::load(&missing, Which::Best, &flex()).unwrap_err();
    assert!(
        e.contains("nope") && e.contains("no such run directory"),
        "{e}"
    );
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let e = PretrainModel::load(tmp.path().join("empty"), Which::Best, &flex()).unwrap_err();
    assert!(e.contains("not a tuwen run directory"), "{e}");

    let pre = tmp.path().join("pre");
    pretrain(&pre);
    // No VQA head: Vqa refuses with what to do.
    let e = Vqa::load_on(&pre, Which::Best, &flex()).unwrap_err();
    assert!(e.contains("no VQA answer head"), "{e}");
    let e = PretrainModel::load(&pre, Which::Step(7), &flex()).unwrap_err();
    assert!(e.contains("no checkpoint of step 7"), "{e}");
    // An answer file that does not fit the model's head.
    std::fs::write(pre.join("answers.txt"), "yes\nno\n").unwrap();
    let e = PretrainModel::load(&pre, Which::Best, &flex()).unwrap_err();
    assert!(
        e.contains("answers.txt") && e.contains("holds 2 answers"),
        "{e}"
    );
    std::fs::remove_file(pre.join("answers.txt")).unwrap();
    // A checkpoint of another architecture (the configuration edited after training).
    let config = pre.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("hidden_size = 32", "hidden_size = 64"),
    )
    .unwrap();
    let e = PretrainModel::load(&pre, Which::Best, &flex()).unwrap_err();
    assert!(e.contains("model.bpk") && e.contains("does not fit"), "{e}");
}

/// An LXMERT run fine-tunes as the others do: VQA (its encoder reused, the MLM / matched /
/// object heads carried, the ITC head dropped) answering an image file, and retrieval.
#[test]
fn an_lxmert_run_fine_tunes_for_vqa_and_retrieval() {
    let tmp = tempfile::tempdir().unwrap();
    let (pre, fine) = (tmp.path().join("pre"), tmp.path().join("vqa"));
    let mut cfg = tiny_pretrain();
    cfg.model.architecture = tuwen_train::config::Architecture::Lxmert;
    cfg.model.v_layers = 1;
    cfg.model.co_layers = 1;
    tuwen_train::pretrain::run(&cfg, &pre, &[flex()], None, |_| {}).unwrap();
    let mut vqa_cfg = tiny_vqa(&pre, "scenes");
    vqa_cfg.run.steps = 30;
    vqa_cfg.eval.every = 30;
    let (summary, r) =
        tuwen_train::finetune::run(&vqa_cfg, &fine, &[flex()], None, |_| {}).unwrap();
    assert!(
        !r.reused.is_empty()
            && r.reused
                .iter()
                .all(|n| n.starts_with("encoder.Lxmert.lxmert.") && is_core(n)),
        "{:?}",
        r.reused
    );
    for head in [
        "encoder.Lxmert.mlm.",
        "encoder.Lxmert.matched.",
        "encoder.Lxmert.obj_predict_head.",
    ] {
        assert!(
            r.kept.iter().any(|n| n.starts_with(head)),
            "{head}: {:?}",
            r.kept
        );
    }
    assert!(
        r.dropped.iter().all(|n| n.starts_with("itc.")),
        "{:?}",
        r.dropped
    );
    // The frozen first language layer did not move.
    assert!(frozen(
        "encoder.Lxmert.lxmert.encoder.layers.0.attention.self_attn.query.weight",
        1
    ));
    assert!(!frozen(
        "encoder.Lxmert.lxmert.encoder.x_layers.0.cross.attention.query.weight",
        1
    ));
    assert!(frozen(
        "encoder.Lxmert.lxmert.encoder.visn_fc.visn_fc.weight",
        1
    ));
    assert!(summary.eval.vqa_accuracy > 0.0, "{:?}", summary.eval);
    let vqa = Vqa::load_on(&fine, Which::Best, &flex()).unwrap();
    let image = image::RgbImage::from_fn(64, 48, |x, _| {
        if x < 32 {
            image::Rgb([220, 30, 30])
        } else {
            image::Rgb([240, 240, 240])
        }
    });
    let top = vqa
        .answer_top(&image, "what color is the circle?", 3)
        .unwrap();
    assert_eq!(top.len(), 3);
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));

    let (retrieval, reuse) = tuwen_train::finetune::run(
        &tiny_retrieval(&pre, 4),
        &tmp.path().join("r"),
        &[flex()],
        None,
        |_| {},
    )
    .unwrap();
    assert!(
        reuse.reused.iter().any(|n| n.starts_with("itc.")),
        "{reuse:?}"
    );
    assert!(
        retrieval.eval.retrieval.image_to_text[2] > 0.0,
        "{:?}",
        retrieval.eval
    );
}

#[test]
fn an_easy_vqa_model_answers_questions_about_image_files() {
    let image = match tuwen_assets::locate("easy_vqa", "test/images/0.png") {
        Ok(p) => p,
        Err(e) => {
            return tuwen_testkit::skip_or_fail(
                "an_easy_vqa_model_answers_questions_about_image_files",
                &e.to_string(),
            );
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let (pre, fine) = (tmp.path().join("pre"), tmp.path().join("vqa"));
    pretrain(&pre);
    let mut cfg = tiny_vqa(&pre, "easy_vqa");
    cfg.run.steps = 30;
    cfg.eval.every = 30;
    cfg.eval.scenes = 64;
    let (summary, _) = tuwen_train::finetune::run(&cfg, &fine, &[flex()], None, |_| {}).unwrap();
    let test = summary.test.expect("the test split is read at the end").1;
    // 13 answers; half the questions are yes/no: even 30 steps beat chance (1/13).
    assert!(test.vqa_accuracy > 0.2, "{test:?}");
    // The task's words joined the scenes' vocabulary: "rectangle" is one new token, and the
    // embedding table grew by copying the pretrained rows (frozen here, so still equal).
    let r = reuse(&fine);
    assert_eq!(r.resized.len(), 2, "{:?}", r.resized);
    let source = PretrainModel::load(&pre, Which::Best, &flex()).unwrap();
    let tuned = PretrainModel::load(&fine, Which::Best, &flex()).unwrap();
    assert_eq!(tuned.tokenizer.encode("rectangle").unwrap().ids.len(), 3);
    assert!(tuned.model.vocab_size() > source.model.vocab_size());
    let word = |m: &PretrainModel, rows: usize| match &m.encoder {
        tuwen_train::model::Encoder::VisualBert(v) => v
            .visual_bert
            .embeddings
            .text
            .word_embeddings
            .weight
            .val()
            .narrow(0, 0, rows)
            .into_data(),
        _ => unreachable!(),
    };
    let rows = source.model.vocab_size();
    assert_eq!(word(&source.model, rows), word(&tuned.model, rows));
    let vqa = Vqa::load_on(&fine, Which::Best, &flex()).unwrap();
    let image = tuwen_vision::load_rgb(&image).unwrap();
    let top = vqa
        .answer_top(&image, "what color is the shape?", 5)
        .unwrap();
    assert_eq!(top.len(), 5);
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(top.iter().all(|a| (0.0..=1.0).contains(&a.score)));
}

#[test]
fn fine_tuning_starts_from_a_hf_bert_checkpoint() {
    let bert = match tuwen_assets::locate("minilm", "model.safetensors") {
        Ok(p) => p.parent().unwrap().to_path_buf(),
        Err(e) => {
            return tuwen_testkit::skip_or_fail(
                "fine_tuning_starts_from_a_hf_bert_checkpoint",
                &e.to_string(),
            );
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_vqa(&bert, "scenes");
    cfg.run.steps = 2;
    cfg.run.batch_size = 4;
    cfg.eval.every = 2;
    cfg.eval.scenes = 8;
    let (summary, reuse) =
        tuwen_train::finetune::run(&cfg, tmp.path(), &[flex()], None, |_| {}).unwrap();
    assert_eq!(summary.steps, 2);
    assert!(
        reuse
            .reused
            .iter()
            .any(|n| n.contains(".encoder.layers.0.")),
        "{:?}",
        reuse.reused
    );
    assert!(reuse.new.iter().any(|n| n.starts_with("vqa.")));
    let loaded = PretrainModel::load(tmp.path(), Which::Last, &flex()).unwrap();
    assert_eq!(loaded.tokenizer.vocab_size(), 30522);
    // A HF VisualBERT directory is refused with the reason.
    let visual = tmp.path().join("visualbert");
    std::fs::create_dir_all(&visual).unwrap();
    std::fs::write(
        visual.join("config.json"),
        r#"{"visual_embedding_dim": 2048}"#,
    )
    .unwrap();
    std::fs::write(visual.join("model.safetensors"), b"").unwrap();
    let e = tuwen_train::finetune::run(
        &tiny_vqa(&visual, "scenes"),
        &tmp.path().join("v"),
        &[flex()],
        None,
        |_| {},
    )
    .unwrap_err();
    assert!(e.contains("2048-d"), "{e}");
}

/// A tiny VQA v2-format dataset: questions and annotations JSON, images named as COCO names them.
fn write_vqa_v2(dir: &Path) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let colors = [[255u8, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]];
    let names = ["red", "blue", "green", "yellow"];
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    for (id, color) in colors.iter().enumerate() {
        let image = image::RgbImage::from_pixel(32, 24, image::Rgb(*color));
        image
            .save(images.join(format!("COCO_val2014_{:012}.png", id + 1)))
            .unwrap();
        for (k, (q, a)) in [
            ("what color is it?", names[id]),
            ("is it red?", if id == 0 { "yes" } else { "no" }),
        ]
        .iter()
        .enumerate()
        {
            let qid = (id + 1) * 10 + k;
            questions
                .push(serde_json::json!({"image_id": id + 1, "question": q, "question_id": qid}));
            // Nine annotators agree, one says something else.
            let mut answers: Vec<serde_json::Value> = (0..9)
                .map(|i| serde_json::json!({"answer": a, "answer_confidence": "yes", "answer_id": i + 1}))
                .collect();
            answers.push(serde_json::json!({"answer": "Purple.", "answer_confidence": "maybe", "answer_id": 10}));
            annotations.push(serde_json::json!({
                "image_id": id + 1, "question_id": qid, "question_type": "what color is",
                "answer_type": "other", "multiple_choice_answer": a, "answers": answers
            }));
        }
    }
    std::fs::write(
        dir.join("q.json"),
        serde_json::json!({"questions": questions}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("a.json"),
        serde_json::json!({"annotations": annotations}).to_string(),
    )
    .unwrap();
}

#[test]
fn vqa_v2_files_train_with_normalised_answers_and_coco_image_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vqa");
    write_vqa_v2(&data);
    let cfg = TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = 4
            batch_size = 4
            [model]
            hidden_size = 32
            layers = 1
            heads = 2
            [eval]
            every = 4
            scenes = 8
            [finetune]
            dataset = "vqa_v2"
            train_questions = {q:?}
            train_annotations = {a:?}
            train_images = {i:?}
            test_questions = {q:?}
            test_annotations = {a:?}
            test_images = {i:?}
            validation_images = 1
            answers = 10
            "#,
            q = data.join("q.json").display().to_string(),
            a = data.join("a.json").display().to_string(),
            i = data.join("images").display().to_string(),
        ),
        "tiny_v2",
    )
    .unwrap();
    let run = tmp.path().join("run");
    let (summary, reuse) = tuwen_train::finetune::run(&cfg, &run, &[flex()], None, |_| {}).unwrap();
    assert_eq!(summary.steps, 4);
    // The test answers are written in the official results format, and the official evaluation
    // of them gives the run's own test accuracy.
    let test = summary.test.expect("test files: a test split").1;
    let official = tuwen_eval::vqa::evaluate(
        &data.join("q.json"),
        &data.join("a.json"),
        &run.join("test_results.json"),
    )
    .unwrap();
    assert!(
        (official.overall / 100.0 - test.vqa_accuracy as f64).abs() < 0.006,
        "official {} vs {}",
        official.overall,
        test.vqa_accuracy
    );
    assert!(reuse.from.is_none() && reuse.reused.is_empty());
    // "Purple." is normalised to "purple" and ranks last (one annotator per question).
    let answers = std::fs::read_to_string(run.join("answers.txt")).unwrap();
    let answers: Vec<&str> = answers.lines().collect();
    assert_eq!(answers.first(), Some(&"no"), "{answers:?}");
    assert!(
        answers.contains(&"purple") && !answers.contains(&"Purple."),
        "{answers:?}"
    );
    // A question whose image file is missing: the error names the file and the question.
    std::fs::remove_file(data.join("images/COCO_val2014_000000000002.png")).unwrap();
    let e = tuwen_train::finetune::run(&cfg, &tmp.path().join("run2"), &[flex()], None, |_| {})
        .unwrap_err();
    assert!(
        e.contains("q.json") && e.contains("question 20") && e.contains("image id 2"),
        "{e}"
    );
}

fn tiny_retrieval(from: &Path, steps: usize) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = {steps}
            batch_size = 16
            [optim]
            learning_rate = 1e-3
            warmup_steps = 5
            [data]
            vocab_scenes = 200
            [eval]
            every = {steps}
            scenes = 16
            retrieval_images = 32
            retrieval_top_k = 8
            [finetune]
            from = {from:?}
            task = "retrieval"
            encoder_lr_ratio = 1.0
            "#,
            from = from.display().to_string()
        ),
        "tiny_retrieval",
    )
    .unwrap()
}

#[test]
fn retrieval_fine_tuning_keeps_the_itc_head_and_beats_zero_shot_recall() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, dir) = (tmp.path().join("pre"), tmp.path().join("retrieval"));
    pretrain(&source);
    let cfg = tiny_retrieval(&source, 150);
    let device = flex();
    // Zero-shot: the pretrained run on the same held-out images.
    let loaded = PretrainModel::load(&source, Which::Best, &device).unwrap();
    let data = tuwen_train::retrieve::held_out_data(&loaded, &device).unwrap();
    let zero_shot = tuwen_train::pretrain::retrieval(
        &loaded.model,
        &data,
        tuwen_data::scene::Split::Test,
        32,
        8,
        &device,
    )
    .unwrap();
    let (summary, reuse) = tuwen_train::finetune::run(&cfg, &dir, &[flex()], None, |_| {}).unwrap();
    // The source's ITC head is reused (trained), the MLM head kept unchanged.
    assert!(
        reuse.reused.iter().any(|n| n.starts_with("itc.")),
        "{reuse:?}"
    );
    assert!(reuse.kept.iter().any(|n| n.contains(".mlm.")), "{reuse:?}");
    let (_, test) = summary.test.unwrap();
    // RSUM (R@1 + R@5 + R@10, both directions), the retrieval papers' summary: a tiny model
    // ranks the right caption higher after 150 steps, if not yet first.
    let rsum = |r: &tuwen_train::retrieval::Recalls| -> f32 {
        r.image_to_text.iter().chain(&r.text_to_image).sum()
    };
    eprintln!("zero-shot {zero_shot:?}\nfine-tuned {:?}", test.retrieval);
    assert!(
        rsum(&test.retrieval) > rsum(&zero_shot) + 0.3,
        "fine-tuned RSUM {} vs zero-shot {}",
        rsum(&test.retrieval),
        rsum(&zero_shot)
    );
    // A source without an ITC head and no model.itc_dim: a clear error.
    let mut plain = tiny_pretrain();
    plain.model.itc_dim = 0;
    let plain_dir = tmp.path().join("plain");
    tuwen_train::pretrain::run(&plain, &plain_dir, &[flex()], None, |_| {}).unwrap();
    let err = tuwen_train::finetune::run(
        &tiny_retrieval(&plain_dir, 2),
        &tmp.path().join("x"),
        &[flex()],
        None,
        |_| {},
    )
    .err()
    .unwrap();
    assert!(err.contains("needs an ITC head"), "{err}");
}
