//! Training on real-format data: a COCO captions file paired with a feature store, the way
//! `tuwen extract-regions` writes it. The store here holds synthetic features whose regions
//! reflect the caption's words, so there is something to learn; what is checked is the path:
//! matching captions to stored images, held-out images, MRC against the stored classes,
//! retrieval, and exact resume; and, on `StoreBatcher` directly, the per-epoch shuffle, the
//! Karpathy splits and the matching of Karpathy paths with store ids.

mod micro_batches;

use std::collections::BTreeSet;
use std::path::Path;

use tuwen_data::formats::{self, CaptionRecord};
use tuwen_data::scene::Split;
use tuwen_objectives::mlm::MaskingConfig;
use tuwen_regions::{BoxXyxy, RegionFeatures, StoreDtype, StoreReader, StoreWriter};
use tuwen_testkit::flex;
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};
use tuwen_train::config::{Architecture, TrainConfig};
use tuwen_train::corpus::{CorpusStats, StoreBatcher, candidate_ids};
use tuwen_train::pretrain::{Event, run};

const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];
const THINGS: [&str; 3] = ["dog", "car", "kite"];
const DIM: usize = 16;
const CLASSES: usize = 12;

/// 24 images `COCO_val2014_0000000000NN.jpg`, two captions each; features of each box encode its
/// (colour, thing) one-hot with noise; class distributions peak at that class.
fn write_corpus(dir: &Path) {
    let mut writer = StoreWriter::open(dir.join("store"), StoreDtype::F32, 8).unwrap();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..24usize {
        let (c, t) = (i % COLORS.len(), (i / COLORS.len()) % THINGS.len());
        let file = format!("COCO_val2014_{i:012}.jpg");
        images.push(serde_json::json!({"id": i, "file_name": file}));
        for (k, caption) in [
            format!("A {} {} in the park.", COLORS[c], THINGS[t]),
            format!("There is a {} {} next to a tree.", COLORS[c], THINGS[t]),
        ]
        .into_iter()
        .enumerate()
        {
            annotations
                .push(serde_json::json!({"id": i * 10 + k, "image_id": i, "caption": caption}));
        }
        let boxes = vec![
            BoxXyxy::new(10.0, 10.0, 200.0, 150.0),
            BoxXyxy::new(150.0, 40.0, 300.0, 220.0),
        ];
        let class = c * THINGS.len() + t;
        let mut features = vec![0.0f32; boxes.len() * DIM];
        let mut class_probs = vec![0.01f32; boxes.len() * CLASSES];
        for b in 0..boxes.len() {
            features[b * DIM + class] = 1.0;
            features[b * DIM + 12 + b] = 0.5 + 0.01 * i as f32;
            class_probs[b * CLASSES + class] = 0.89;
        }
        let global = (0..DIM)
            .map(|d| (features[d] + features[DIM + d]) / 2.0)
            .collect();
        let id = format!("COCO_val2014_{i:012}");
        writer
            .add(
                &id,
                RegionFeatures {
                    image_size: [320, 240],
                    boxes,
                    features,
                    dim: DIM,
                    global,
                    class_probs,
                    classes: CLASSES,
                    scores: vec![0.89, 0.89],
                },
            )
            .unwrap();
    }
    writer.finish().unwrap();
    // An image without features: its captions are dropped and counted.
    images.push(serde_json::json!({"id": 99, "file_name": "COCO_val2014_000000000099.jpg"}));
    annotations.push(serde_json::json!({"id": 990, "image_id": 99, "caption": "A lost cat."}));
    let json = serde_json::json!({"images": images, "annotations": annotations});
    std::fs::write(dir.join("captions.json"), json.to_string()).unwrap();
}

fn config(dir: &Path) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            r#"
            [run]
            steps = 12
            batch_size = 8
            log_every = 1
            [model]
            architecture = "vilbert"
            hidden_size = 32
            layers = 2
            heads = 2
            v_hidden_size = 32
            v_layers = 2
            co_layers = 1
            itc_dim = 16
            [data]
            source = "store"
            captions = "{}"
            captions_format = "coco"
            store = "{}"
            held_out_images = 6
            region_mask_prob = 0.3
            [eval]
            every = 6
            scenes = 6
            retrieval_images = 6
            retrieval_top_k = 3
            "#,
            dir.join("captions.json").display(),
            dir.join("store").display()
        ),
        "store run",
    )
    .unwrap()
}

#[test]
fn a_coco_caption_file_with_a_feature_store_trains_evaluates_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    write_corpus(data.path());
    let cfg = config(data.path());

    let a = tempfile::tempdir().unwrap();
    let mut notes = Vec::new();
    let summary = run(&cfg, a.path(), &[flex()], None, |e| {
        if let Event::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert_eq!(summary.steps, 12);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("18 training images, 3 validation, 3 test (last images by id); 1 captions without features")),
        "{notes:?}"
    );
    // The corpus vocabulary holds its words.
    let vocab = std::fs::read_to_string(a.path().join("vocab.txt")).unwrap();
    for word in ["kite", "park", "yellow"] {
        assert!(vocab.lines().any(|l| l == word), "{word} missing");
    }
    let r = summary.eval.retrieval;
    assert!(
        r.image_to_text[2] > 0.0 && r.text_to_image[2] > 0.0,
        "{r:?}"
    );
    let lines = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    assert!(lines.contains("train/region") && lines.contains("eval/region_accuracy"));

    // Interrupted at step 6 and resumed: the same log, bit for bit.
    let b = tempfile::tempdir().unwrap();
    run(&cfg, b.path(), &[flex()], Some(6), |_| {}).unwrap();
    run(&cfg, b.path(), &[flex()], None, |_| {}).unwrap();
    assert_eq!(
        lines,
        std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap()
    );
}

/// `objectives.mrc_kl`: every architecture learns the stored class distributions of masked
/// regions (90% of them zeroed; the class is named by the caption and carried by the image's
/// other regions), held out. The tiny models sit near the uniform prediction (KL ~1.8) for a
/// few hundred steps, then fall (training KL at step 600, measured: VisualBERT ~0.5, ViLBERT
/// ~0.75, LXMERT ~0.07), hence 600 steps.
#[test]
fn mrc_kl_learns_the_stored_class_distributions() {
    let data = tempfile::tempdir().unwrap();
    write_corpus(data.path());
    for arch in [
        Architecture::VisualBert,
        Architecture::Vilbert,
        Architecture::Lxmert,
    ] {
        let mut cfg = config(data.path());
        cfg.model.architecture = arch;
        cfg.run.steps = 600;
        cfg.optim.learning_rate = 2e-3;
        cfg.optim.warmup_steps = 5;
        cfg.eval.every = 60;
        cfg.eval.retrieval_images = 0;
        cfg.data.region_mask_prob = 0.5;
        // 6 validation images: enough held-out masked regions to measure.
        cfg.data.held_out_images = 12;
        cfg.objectives.mrc.enabled = false;
        cfg.objectives.mrc_kl.enabled = true;
        let dir = tempfile::tempdir().unwrap();
        run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap();
        let logged: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.path().join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let series = |key: &str| -> Vec<f64> {
            logged
                .iter()
                .filter_map(|v| v.get(key).and_then(|x| x.as_f64()))
                .collect()
        };
        let held_out = series("eval/mrc_kl");
        let trained = series("train/mrc_kl");
        assert!(
            trained.len() == 600 && trained.iter().any(|&l| l > 0.0),
            "{arch:?}: {trained:?}"
        );
        assert!(held_out.len() >= 4, "{arch:?}: {held_out:?}");
        let (first, last) = (held_out[0], held_out[held_out.len() - 1]);
        assert!(
            first > 0.5 && last < 0.5 * first,
            "{arch:?}: held-out MRC-KL {held_out:?}"
        );
    }
}

/// [`write_corpus`] in `dir` as a training batcher (6 held-out images) with `masking` of the
/// regions and `mismatch_prob` mismatched captions.
fn corpus_batcher(
    dir: &Path,
    masking: tuwen_objectives::mrm::RegionMaskingConfig,
    mismatch_prob: f64,
) -> StoreBatcher {
    write_corpus(dir);
    let records = formats::coco_captions(&dir.join("captions.json")).unwrap();
    let store = StoreReader::open(dir.join("store")).unwrap();
    let tokens =
        BertTokenizer::word_vocabulary(records.iter().map(|r| &r.caption), 1000, true).unwrap();
    let tokenizer = BertTokenizer::from_tokens(&tokens, TokenizerOptions::default()).unwrap();
    let (batcher, _) = StoreBatcher::new(
        &records,
        store,
        6,
        1,
        tokenizer,
        MaskingConfig::default(),
        mismatch_prob,
        Some(masking),
    )
    .unwrap();
    batcher
}

/// MRC-KL is a mean over masked regions: a step split into micro-batches gives the whole
/// batch's gradient and loss (the distributions follow their regions into each part).
#[test]
fn mrc_kl_splits_exactly_over_micro_batches() {
    use tuwen_train::model::{ModelShape, PretrainModel};
    use tuwen_train::pretrain::ObjectiveWeights;

    let data = tempfile::tempdir().unwrap();
    let masking = tuwen_objectives::mrm::RegionMaskingConfig {
        mask_prob: 0.5,
        ..tuwen_objectives::mrm::RegionMaskingConfig::VILBERT
    };
    let batcher = corpus_batcher(data.path(), masking, 0.0);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let host = batcher
        .host_batch(Split::Train, &(0..9).collect::<Vec<u64>>(), &mut rng)
        .unwrap();
    assert!(host.region_positions.len() >= 3 && host.distribution_classes == CLASSES);
    let mut cfg = config(data.path());
    cfg.objectives.mrc_kl.enabled = true;
    // ITC contrasts within each micro-batch (not split exactly, documented): off here.
    cfg.model.itc_dim = 0;
    let shape = ModelShape {
        vocab: batcher.tokenizer.vocab_size(),
        feature_dim: DIM,
        max_text_len: 32,
        answers: 0,
        region_classes: CLASSES,
    };
    let device = flex().autodiff();
    let model = PretrainModel::init(&cfg.model, &shape, &device);
    let weights = ObjectiveWeights::from_config(&cfg);
    let grads = |parts: usize| micro_batches::gradients(&model, &host, &device, parts, weights, 7);
    let ((whole, a), (split, b)) = (grads(1), grads(3));
    assert!(a.mrc_kl > 0.0, "{a:?}");
    assert!(
        (a.mrc_kl - b.mrc_kl).abs() <= 1e-5 * a.mrc_kl,
        "{a:?} vs {b:?}"
    );
    micro_batches::assert_same_gradients(&whole, &split);
}

/// One process of a data-parallel job reads from the store only its rows and those its region
/// swaps read (`host_batch_rows`); its parts of the batch are those of the whole batch.
#[test]
fn a_process_reads_its_own_rows_from_the_store() {
    let data = tempfile::tempdir().unwrap();
    let masking = tuwen_objectives::mrm::RegionMaskingConfig {
        mask_prob: 0.6,
        zero_prob: 0.2,
        swap_prob: 0.7,
    };
    let batcher = corpus_batcher(data.path(), masking, 0.3);
    let indices: Vec<u64> = (0..12).collect();
    let build = |own| {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
        batcher
            .host_batch_rows(Split::Train, &indices, own, &mut rng)
            .unwrap()
    };
    let whole = build(None);
    assert!(whole.distribution_classes == CLASSES && !whole.region_positions.is_empty());
    let (ranks, local) = (2, 3);
    let mut read_for_swaps = 0;
    for rank in 0..ranks {
        let own = tuwen_train::pretrain::own_rows(12, rank, ranks, local).unwrap();
        let mine = build(Some(own.clone()));
        assert_eq!(mine.region_positions, whole.region_positions);
        let (a, b) = (mine.split(ranks * local), whole.split(ranks * local));
        for part in rank * local..(rank + 1) * local {
            assert_eq!(a[part], b[part], "rank {rank}, part {part}");
        }
        let width = whole.regions * whole.feature_dim;
        let unmasked = mine.unmasked_features.as_ref().unwrap();
        read_for_swaps += (0..12)
            .filter(|r| !own.contains(r))
            .filter(|&r| {
                unmasked[r * width..(r + 1) * width]
                    .iter()
                    .any(|&v| v != 0.0)
            })
            .count();
    }
    assert!(read_for_swaps > 0, "no swap read another process's row");
}

#[test]
fn mrc_kl_needs_stored_distributions_and_masked_regions() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path());
    cfg.objectives.mrc_kl.enabled = true;
    cfg.data.region_mask_prob = 0.0;
    let e = cfg.validate().unwrap_err();
    assert!(e.contains("region_mask_prob"), "{e}");
    let e = TrainConfig::from_toml(
        "[objectives.mrc_kl]\nenabled = true\n[data]\nregion_mask_prob = 0.15",
        "kl.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("data.source = \"store\""), "{e}");
}

#[test]
fn a_store_run_names_missing_files_and_impossible_splits() {
    let data = tempfile::tempdir().unwrap();
    write_corpus(data.path());
    let mut cfg = config(data.path());
    cfg.data.store = Some("/nonexistent/store".into());
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("/nonexistent/store"), "{err}");

    let mut cfg = config(data.path());
    cfg.data.held_out_images = 24;
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("none would be left to train on"), "{err}");

    let mut cfg = config(data.path());
    cfg.data.captions = Some(data.path().join("missing.json").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let err = run(&cfg, dir.path(), &[flex()], None, |_| {}).unwrap_err();
    assert!(err.contains("missing.json"), "{err}");
}

/// A store with one box per image whose global vector starts with the image's index in `ids`
/// (so a batch row tells which image it shows).
fn write_store(dir: &Path, ids: &[String]) -> StoreReader {
    let mut writer = StoreWriter::open(dir, StoreDtype::F32, 4).unwrap();
    for (k, id) in ids.iter().enumerate() {
        let mut global = vec![0.0f32; DIM];
        global[0] = k as f32;
        writer
            .add(
                id,
                RegionFeatures {
                    image_size: [64, 48],
                    boxes: vec![BoxXyxy::new(1.0, 1.0, 30.0, 20.0)],
                    features: vec![0.5; DIM],
                    dim: DIM,
                    global,
                    class_probs: vec![1.0 / CLASSES as f32; CLASSES],
                    classes: CLASSES,
                    scores: vec![0.9],
                },
            )
            .unwrap();
    }
    writer.finish().unwrap();
    StoreReader::open(dir).unwrap()
}

fn batcher(
    records: &[CaptionRecord],
    store: StoreReader,
    held_out: usize,
    seed: u64,
) -> Result<(StoreBatcher, CorpusStats), String> {
    let tokens =
        BertTokenizer::word_vocabulary(records.iter().map(|r| &r.caption), 1000, true).unwrap();
    let tokenizer = BertTokenizer::from_tokens(&tokens, TokenizerOptions::default()).unwrap();
    StoreBatcher::new(
        records,
        store,
        held_out,
        seed,
        tokenizer,
        MaskingConfig::default(),
        0.5,
        None,
    )
}

/// Ten images `img00` .. `img09` (`imgNN.jpg`), one caption each, no splits.
fn ten_images() -> (Vec<String>, Vec<CaptionRecord>) {
    let ids: Vec<String> = (0..10).map(|i| format!("img{i:02}")).collect();
    let records = ids
        .iter()
        .enumerate()
        .map(|(i, id)| record(&format!("{id}.jpg"), &i.to_string(), None))
        .collect();
    (ids, records)
}

fn record(image: &str, id: &str, split: Option<&str>) -> CaptionRecord {
    CaptionRecord {
        image_id: id.to_string(),
        image: image.to_string(),
        caption: format!("a photo of image {id}"),
        split: split.map(str::to_string),
    }
}

/// Which store image (index in the store's id list) each row of the batch of `indices` shows.
fn shown(b: &StoreBatcher, split: Split, indices: &[u64]) -> Vec<usize> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let host = b.host_batch(split, indices, &mut rng).unwrap();
    (0..host.rows)
        .map(|r| host.features[r * host.regions * host.feature_dim] as usize)
        .collect()
}

#[test]
fn training_epochs_visit_every_image_in_an_order_seeded_by_seed_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, records) = ten_images();
    let (b, stats) = batcher(&records, write_store(&dir.path().join("a"), &ids), 2, 7).unwrap();
    assert_eq!(stats.train_images, 8);
    let all: Vec<u64> = (0..24).collect();
    let seen = shown(&b, Split::Train, &all);
    let epochs: Vec<&[usize]> = seen.chunks(8).collect();
    for e in &epochs {
        // Each epoch shows every training image (the first 8 by id) once ...
        assert_eq!(e.iter().copied().collect::<BTreeSet<_>>(), (0..8).collect());
    }
    // ... in an order of its own, not id order.
    assert_ne!(epochs[0], epochs[1]);
    assert!(
        epochs.iter().any(|e| *e != (0..8).collect::<Vec<_>>()),
        "{seen:?}"
    );

    // A pure function of (seed, index): any subset, any batcher, any thread.
    let (again, _) = batcher(&records, write_store(&dir.path().join("b"), &ids), 2, 7).unwrap();
    assert_eq!(
        shown(&again, Split::Train, &[13, 2, 23]),
        [seen[13], seen[2], seen[23]]
    );
    // Six epochs through four loader threads, each in its own order, agree with one thread.
    let long: Vec<u64> = (0..48).collect();
    let expected = shown(&b, Split::Train, &long);
    assert_eq!(expected[..24], seen[..]);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4usize)
            .map(|t| {
                let b = &again;
                s.spawn(move || {
                    let idx: Vec<u64> = (0..48u64).map(|k| (k * 5 + 7 * t as u64) % 48).collect();
                    (idx.clone(), shown(b, Split::Train, &idx))
                })
            })
            .collect();
        for h in handles {
            let (idx, got) = h.join().unwrap();
            for (i, g) in idx.iter().zip(got) {
                assert_eq!(g, expected[*i as usize], "example {i}");
            }
        }
    });
    let (other, _) = batcher(&records, write_store(&dir.path().join("c"), &ids), 2, 8).unwrap();
    assert_ne!(shown(&other, Split::Train, &all), seen);
    // Held-out examples are not shuffled: example i is image i of the split.
    assert_eq!(shown(&b, Split::Test, &[0, 1]), [9, 9]);
    assert_eq!(shown(&b, Split::Validation, &[0, 1]), [8, 8]);
}

fn karpathy_json(dir: &Path, images: &[(&str, Option<&str>, &str)]) -> Vec<CaptionRecord> {
    let images: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, (file, filepath, split))| {
            let mut img = serde_json::json!({
                "filename": file,
                "imgid": i,
                "split": split,
                "sentences": [
                    {"tokens": ["a"], "raw": format!("A picture number {i}. ")},
                    {"tokens": ["a"], "raw": format!("Another view of number {i}.")}
                ],
            });
            if let Some(p) = filepath {
                img["filepath"] = serde_json::json!(p);
                img["cocoid"] = serde_json::json!(1000 + i);
            }
            img
        })
        .collect();
    let path = dir.join("dataset.json");
    std::fs::write(&path, serde_json::json!({"images": images}).to_string()).unwrap();
    formats::karpathy(&path).unwrap()
}

fn names(b: &StoreBatcher, split: Split) -> Vec<&str> {
    b.images(split).iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn karpathy_splits_decide_train_validation_and_test() {
    let dir = tempfile::tempdir().unwrap();
    // The test and validation images come first by id: holding out the last images by id
    // would train on them.
    let files = [
        ("a_test", "test"),
        ("b_val", "val"),
        ("c_restval", "restval"),
        ("d_train", "train"),
        ("e_train", "train"),
        ("f_train", "train"),
    ];
    let images: Vec<_> = files
        .iter()
        .map(|(f, s)| (format!("{f}.jpg"), *s))
        .collect();
    let images: Vec<_> = images.iter().map(|(f, s)| (f.as_str(), None, *s)).collect();
    let records = karpathy_json(dir.path(), &images);
    let ids: Vec<String> = files.iter().map(|(f, _)| f.to_string()).collect();
    let (b, stats) = batcher(&records, write_store(&dir.path().join("s"), &ids), 2, 0).unwrap();
    assert_eq!(
        names(&b, Split::Train),
        ["c_restval", "d_train", "e_train", "f_train"]
    );
    assert_eq!(names(&b, Split::Validation), ["b_val"]);
    assert_eq!(names(&b, Split::Test), ["a_test"]);
    assert_eq!(
        (
            stats.train_images,
            stats.validation_images,
            stats.test_images
        ),
        (4, 1, 1)
    );
    assert!(stats.corpus_splits);
    assert_eq!(b.images(Split::Test)[0].1.len(), 2);

    // A split missing from the store is named; an unknown split value too.
    let train_only: Vec<CaptionRecord> = records
        .iter()
        .filter(|r| matches!(r.split.as_deref(), Some("train" | "restval")))
        .cloned()
        .collect();
    let err = batcher(&train_only, write_store(&dir.path().join("t"), &ids), 2, 0).unwrap_err();
    assert!(err.contains("4 training, 0 validation and 0 test"), "{err}");
    let mut odd = records.clone();
    odd[0].split = Some("dev".into());
    let err = batcher(&odd, write_store(&dir.path().join("u"), &ids), 2, 0).unwrap_err();
    assert!(err.contains("unknown split \"dev\""), "{err}");
    assert_eq!(formats::karpathy_split("restval"), Some(Split::Train));
    assert_eq!(formats::karpathy_split("val"), Some(Split::Validation));
}

#[test]
fn a_corpus_without_splits_holds_out_validation_then_test_images_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, records) = ten_images();
    let (b, stats) = batcher(&records, write_store(&dir.path().join("a"), &ids), 5, 0).unwrap();
    assert_eq!(names(&b, Split::Validation), ["img05", "img06"]);
    assert_eq!(names(&b, Split::Test), ["img07", "img08", "img09"]);
    assert_eq!(b.images(Split::Train).len(), 5);
    assert!(!stats.corpus_splits);
    // A single held-out image serves as both.
    let (b, _) = batcher(&records, write_store(&dir.path().join("b"), &ids), 1, 0).unwrap();
    assert_eq!(names(&b, Split::Validation), ["img09"]);
    assert_eq!(names(&b, Split::Test), ["img09"]);
}

#[test]
fn karpathy_paths_match_store_ids_as_extract_regions_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let images = [
        ("COCO_val2014_000000391895.jpg", Some("val2014"), "test"),
        ("COCO_val2014_000000522418.jpg", Some("val2014"), "val"),
        (
            "COCO_train2014_000000318556.jpg",
            Some("train2014"),
            "train",
        ),
        ("COCO_val2014_000000184613.jpg", Some("val2014"), "restval"),
    ];
    let records = karpathy_json(dir.path(), &images);
    assert_eq!(records[0].image, "val2014/COCO_val2014_000000391895.jpg");
    // `tuwen extract-regions` (crates/tuwen-cli/src/extract.rs, `list_images`) names an image of
    // a directory by its file stem, and a listed image by the listed path without extension.
    let from_directory: Vec<String> = images
        .iter()
        .map(|(f, _, _)| {
            Path::new(f)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let from_list: Vec<String> = images
        .iter()
        .map(|(f, p, _)| {
            Path::new(&format!("{}/{f}", p.unwrap()))
                .with_extension("")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for (name, ids) in [("dir", &from_directory), ("list", &from_list)] {
        let (b, stats) = batcher(&records, write_store(&dir.path().join(name), ids), 1, 0)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.missing_captions, 0, "{name}");
        assert_eq!(
            (
                stats.train_images,
                stats.validation_images,
                stats.test_images
            ),
            (2, 1, 1),
            "{name}"
        );
        assert_eq!(names(&b, Split::Test), [ids[0].as_str()], "{name}");
        assert_eq!(names(&b, Split::Validation), [ids[1].as_str()], "{name}");
    }
    assert_eq!(
        candidate_ids("val2014/COCO_val2014_000000391895.jpg", "391895"),
        [
            "val2014/COCO_val2014_000000391895",
            "COCO_val2014_000000391895",
            "val2014/COCO_val2014_000000391895.jpg",
            "391895"
        ]
    );

    // Two images whose file stems collide in a store of file stems are an error, not merged.
    let records = karpathy_json(
        dir.path(),
        &[
            ("x.jpg", Some("train2014"), "train"),
            ("x.jpg", Some("val2014"), "test"),
            ("y.jpg", Some("val2014"), "val"),
        ],
    );
    let store = write_store(&dir.path().join("stems"), &["x".into(), "y".into()]);
    let err = batcher(&records, store, 1, 0).unwrap_err();
    assert!(
        err.contains("train2014/x.jpg and val2014/x.jpg both match store id x"),
        "{err}"
    );
}
