//! Retrieval with a trained run (`tuwen_train::retrieve`): ranked results with both scores, the
//! embedding index (reused, refreshed when an image file or the checkpoint changes), the reverse
//! direction, held-out and file-based evaluation, the recall helper, and clear errors.

use std::path::{Path, PathBuf};

use tuwen_data::scene::{SceneConfig, Split};
use tuwen_testkit::flex;
use tuwen_train::config::TrainConfig;
use tuwen_train::retrieval::{evaluate, similarities, top_k};
use tuwen_train::retrieve::{self, Retriever};
use tuwen_train::run_dir::Which;

/// A pretraining run of a few seconds with an ITC head.
fn tiny(steps: usize) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = {steps}
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
            retrieval_images = 8
            retrieval_top_k = 3
            "#
        ),
        "tiny_itc",
    )
    .unwrap()
}

fn pretrain(dir: &Path, steps: usize) {
    tuwen_train::pretrain::run(&tiny(steps), dir, &[flex()], None, |_| {}).unwrap();
}

/// `n` held-out scenes as PNG files `0.png ..` in `dir`, with their longest captions.
fn scene_files(dir: &Path, n: u64) -> (Vec<PathBuf>, Vec<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let scenes = SceneConfig::default();
    (0..n)
        .map(|i| {
            let scene = scenes.generate(7, Split::Test, i);
            let path = dir.join(format!("{i}.png"));
            scene.image.save(&path).unwrap();
            let caption = scene.captions.iter().max_by_key(|c| c.len()).unwrap();
            (path, caption.clone())
        })
        .unzip()
}

#[test]
fn with_a_perfect_similarity_or_itm_every_recall_is_one_and_each_pair_is_scored_once() {
    // 5 images, 2 captions each.
    let text_image: Vec<usize> = (0..10).map(|t| t / 2).collect();
    let oracle = |img: usize, texts: &[usize]| -> Vec<f32> {
        texts
            .iter()
            .map(|&t| f32::from(text_image[t] == img))
            .collect()
    };
    let sim: Vec<f32> = (0..5 * 10)
        .map(|i| f32::from(text_image[i % 10] == i / 10))
        .collect();
    let r = evaluate(&sim, 5, 10, &text_image, 2, oracle);
    assert_eq!(r.image_to_text, [1.0; 3]);
    assert_eq!(r.text_to_image, [1.0; 3]);
    // A useless similarity (every pair ties) with k >= N is ITM over all pairs: each pair
    // scored once, the recalls ITM's.
    let mut pairs = std::collections::HashSet::new();
    let r = evaluate(&[0.0; 50], 5, 10, &text_image, 10, |img, texts| {
        for &t in texts {
            assert!(pairs.insert((img, t)), "pair ({img}, {t}) scored twice");
        }
        oracle(img, texts)
    });
    assert_eq!(pairs.len(), 50);
    assert_eq!((r.image_to_text, r.text_to_image), ([1.0; 3], [1.0; 3]));
    // The ranking helpers.
    let s = similarities(
        &[vec![1.0, 0.0], vec![0.0, 2.0]],
        &[vec![3.0, 1.0], vec![1.0, 1.0]],
    );
    assert_eq!(s, vec![3.0, 1.0, 2.0, 2.0]);
    assert_eq!(top_k(&s, 2, 2, 1), vec![vec![0], vec![0]]);
    assert_eq!(top_k(&s, 2, 2, 5), vec![vec![0, 1], vec![0, 1]]);
}

#[test]
fn retrieval_ranks_with_both_scores_and_caches_embeddings_until_a_file_or_the_model_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    pretrain(&run, 10);
    let (images, captions) = scene_files(&tmp.path().join("images"), 6);

    let r = Retriever::load(&run, Which::Last, &flex()).unwrap();
    assert_eq!(r.index_dir(), run.join("retrieval-index"));
    let first = r.search_images(&captions[2], &images, 3).unwrap();
    assert_eq!(first.hits.len(), 3);
    assert_eq!(first.candidates, 6);
    assert_eq!(
        first.hits.iter().map(|h| h.rank).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(first.hits.windows(2).all(|w| w[0].itm >= w[1].itm));
    for h in &first.hits {
        assert!((0.0..=1.0).contains(&h.itm), "{h:?}");
        assert!((-1.0001..=1.0001).contains(&h.itc), "{h:?}");
        assert_eq!(h.item, images[h.index].display().to_string());
    }
    assert_eq!((first.images.cached, first.images.computed), (0, 6));
    assert_eq!((first.texts.cached, first.texts.computed), (0, 1));
    assert!(run.join("retrieval-index/images.json").is_file());

    // Second call: every embedding from the index, the same ranking.
    let second = r.search_images(&captions[2], &images, 3).unwrap();
    assert_eq!((second.images.cached, second.images.computed), (6, 0));
    assert_eq!((second.texts.cached, second.texts.computed), (1, 0));
    assert_eq!(first.hits, second.hits);
    // A fresh process (a new Retriever) reads the same index.
    let again = Retriever::load(&run, Which::Last, &flex()).unwrap();
    assert_eq!(again.model_id(), r.model_id());
    let third = again.search_images(&captions[2], &images, 3).unwrap();
    assert_eq!((third.images.cached, third.images.computed), (6, 0));

    // A changed image file is embedded again; the others stay cached.
    let other = SceneConfig::default().generate(8, Split::Test, 99);
    other.image.save(&images[4]).unwrap();
    let f = std::fs::File::options()
        .append(true)
        .open(&images[4])
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let changed = r.search_images(&captions[2], &images, 3).unwrap();
    assert_eq!((changed.images.cached, changed.images.computed), (5, 1));
    assert!(changed.images.reset.is_none());

    // The reverse direction: texts for an image, k larger than the texts gives them all.
    let texts = r.search_texts(&images[1], &captions, 10).unwrap();
    assert_eq!(texts.hits.len(), 6);
    assert_eq!((texts.images.cached, texts.images.computed), (1, 0));
    let mut distinct = captions.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        texts.texts.computed,
        distinct.len() - 1,
        "the query caption was cached already"
    );
    assert!(texts.hits.windows(2).all(|w| w[0].itm >= w[1].itm));
    assert!(texts.hits.iter().all(|h| h.item == captions[h.index]));

    // A new checkpoint (the run resumed for more steps; config.toml put back so only the
    // weights differ) invalidates the index.
    let config = std::fs::read(run.join("config.toml")).unwrap();
    pretrain(&run, 20);
    std::fs::write(run.join("config.toml"), config).unwrap();
    let resumed = Retriever::load(&run, Which::Last, &flex()).unwrap();
    assert_eq!(resumed.run().step, 20);
    assert_ne!(resumed.model_id(), r.model_id());
    let after = resumed.search_images(&captions[2], &images, 3).unwrap();
    assert_eq!((after.images.cached, after.images.computed), (0, 6));
    assert!(
        after
            .images
            .reset
            .as_deref()
            .unwrap()
            .contains("model changed"),
        "{:?}",
        after.images.reset
    );
    assert!(after.texts.reset.is_some());
    // A corrupt index file is rebuilt, not an error.
    std::fs::write(run.join("retrieval-index/texts.json"), "{not json").unwrap();
    let rebuilt = resumed.search_images(&captions[2], &images, 1).unwrap();
    assert_eq!(rebuilt.hits.len(), 1);
    assert!(
        rebuilt
            .texts
            .reset
            .as_deref()
            .unwrap()
            .contains("unreadable")
    );
}

#[test]
fn retrieval_evaluation_on_held_out_scenes_and_on_files_and_bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    pretrain(&run, 10);
    let loaded = tuwen_train::model::PretrainModel::load(&run, Which::Best, &flex()).unwrap();
    let data = retrieve::held_out_data(&loaded, &flex()).unwrap();
    let r = retrieve::evaluate_held_out(&loaded, &data, Split::Test, 8, 3, &flex()).unwrap();
    for v in r.image_to_text.iter().chain(&r.text_to_image) {
        assert!((0.0..=1.0).contains(v), "{r:?}");
    }
    // Re-ranking all 8 candidates (ITM over all pairs): R@10 finds everything.
    let all = retrieve::evaluate_held_out(&loaded, &data, Split::Test, 8, 8, &flex()).unwrap();
    assert_eq!((all.image_to_text[2], all.text_to_image[2]), (1.0, 1.0));
    assert!(
        retrieve::evaluate_held_out(&loaded, &data, Split::Test, 8, 0, &flex())
            .unwrap_err()
            .contains("k must be at least 1")
    );

    // Image files with a COCO caption file.
    let dir = tmp.path().join("images");
    let (images, captions) = scene_files(&dir, 4);
    let coco = serde_json::json!({
        "images": images.iter().enumerate().map(|(i, p)| serde_json::json!({
            "id": i, "file_name": p.file_name().unwrap().to_str().unwrap()
        })).collect::<Vec<_>>(),
        "annotations": captions.iter().enumerate().flat_map(|(i, c)| [
            serde_json::json!({"image_id": i, "caption": c}),
            serde_json::json!({"image_id": i, "caption": format!("{c} again")}),
        ]).collect::<Vec<_>>(),
    });
    let coco_path = tmp.path().join("captions.json");
    std::fs::write(&coco_path, coco.to_string()).unwrap();
    let retrieve::CocoPairs {
        images: files,
        texts,
        text_image,
    } = retrieve::coco_pairs(&dir, &coco_path, 3).unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(texts.len(), 6);
    assert_eq!(text_image, [0, 0, 1, 1, 2, 2]);
    let retriever = Retriever::load(&run, Which::Best, &flex()).unwrap();
    let r = retriever.evaluate(&files, &texts, &text_image, 2).unwrap();
    for v in r.image_to_text.iter().chain(&r.text_to_image) {
        assert!((0.0..=1.0).contains(v), "{r:?}");
    }
    let all = retriever.evaluate(&files, &texts, &text_image, 6).unwrap();
    assert_eq!((all.image_to_text[2], all.text_to_image[2]), (1.0, 1.0));
    std::fs::remove_file(&images[1]).unwrap();
    let e = retrieve::coco_pairs(&dir, &coco_path, 3).unwrap_err();
    assert!(e.contains("1.png") && e.contains("missing"), "{e}");

    // Bad inputs: clear errors naming what is wrong, never panics.
    let e = retrieve::image_files(&tmp.path().join("nope")).unwrap_err();
    assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let e = retrieve::image_files(&empty).unwrap_err();
    assert!(e.contains("empty") && e.contains("no images"), "{e}");
    let blank = tmp.path().join("blank.txt");
    std::fs::write(&blank, "\n  \n").unwrap();
    let e = retrieve::read_texts(&blank).unwrap_err();
    assert!(e.contains("blank.txt") && e.contains("no texts"), "{e}");
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let e = retriever
        .search_images("a red circle", &[images[0].clone(), corrupt], 2)
        .unwrap_err();
    assert!(e.contains("corrupt.png"), "{e}");
    let e = retriever
        .search_images("a red circle", &[images[0].clone()], 0)
        .unwrap_err();
    assert!(e.contains("k must be at least 1"), "{e}");
    let e = retriever.search_texts(&images[0], &[], 3).unwrap_err();
    assert!(e.contains("no texts"), "{e}");
    let e = retriever
        .search_texts(&tmp.path().join("gone.png"), &captions, 3)
        .unwrap_err();
    assert!(e.contains("gone.png"), "{e}");
    // A 1 x 1 image is still an image.
    let dot = dir.join("dot.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10]))
        .save(&dot)
        .unwrap();
    let hits = retriever.search_texts(&dot, &captions, 2).unwrap().hits;
    assert_eq!(hits.len(), 2);

    // A run without an ITC head.
    let no_itc = tmp.path().join("no_itc");
    let mut cfg = tiny(10);
    cfg.model.itc_dim = 0;
    cfg.eval.retrieval_images = 0;
    tuwen_train::pretrain::run(&cfg, &no_itc, &[flex()], None, |_| {}).unwrap();
    let e = Retriever::load(&no_itc, Which::Best, &flex()).unwrap_err();
    assert!(
        e.contains("no_itc") && e.contains("has no ITC head") && e.contains("itc_dim > 0"),
        "{e}"
    );
}
