//! Fuzzing of every parser a user feeds: the committed valid fixtures (or small valid files
//! built here) are mutated deterministically and fed through the public API; a panic, a hang, an
//! empty error message or a huge allocation fails the test with the seed to reproduce it.
//!
//! Cases per parser: `TUWEN_FUZZ_CASES` (default 1000); `cargo xtask fuzz --cases N` runs many
//! more. See the crate documentation of `tuwen_fuzz` for replaying a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tuwen_data::formats::{self, OnMalformed};
use tuwen_fuzz::{GuardedAlloc, Input, Kind, Options, Target};
use tuwen_regions::tsv;
use tuwen_regions::{BoxXyxy, RegionFeatures, StoreDtype, StoreReader, StoreWriter};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn data_fixture(name: &str, kind: Kind) -> Input {
    Input::fixture(
        name,
        repo(&format!("crates/tuwen-data/tests/fixtures/{name}")),
        kind,
    )
}

fn options() -> Options {
    Options::from_env(Some(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures"),
    ))
}

fn check(target: Target) {
    tuwen_fuzz::run(&target, &options()).assert_clean();
}

/// An error as the user sees it (`Display`).
fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A rejection by a mode that may reject the valid fixture too (strict line formats whose
/// fixtures hold a malformed line on purpose): only its message is checked.
fn strict_mode_ok<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<(), String> {
    match result {
        Err(e) if e.to_string().trim().is_empty() => Err(String::new()),
        _ => Ok(()),
    }
}

#[test]
fn coco_captions() {
    check(Target::new(
        "coco_captions",
        vec![data_fixture("coco_captions.json", Kind::Json)],
        |dir| {
            formats::coco_captions(&dir.join("coco_captions.json"))
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn coco_instances() {
    check(Target::new(
        "coco_instances",
        vec![data_fixture("coco_instances.json", Kind::Json)],
        |dir| {
            formats::coco_instances(&dir.join("coco_instances.json"))
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn karpathy() {
    check(Target::new(
        "karpathy",
        vec![
            data_fixture("dataset_coco.json", Kind::Json),
            data_fixture("dataset_flickr30k.json", Kind::Json),
        ],
        |dir| {
            formats::karpathy(&dir.join("dataset_coco.json")).map_err(msg)?;
            formats::karpathy(&dir.join("dataset_flickr30k.json")).map_err(msg)?;
            Ok(())
        },
    ));
}

#[test]
fn cc_tsv() {
    check(Target::new(
        "cc_tsv",
        vec![data_fixture("cc_sample.tsv", Kind::Lines)],
        |dir| {
            let path = dir.join("cc_sample.tsv");
            strict_mode_ok(formats::cc_tsv(&path, OnMalformed::Fail))?;
            formats::cc_tsv(&path, OnMalformed::Skip)
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn vqa_v2() {
    check(Target::new(
        "vqa_v2",
        vec![
            data_fixture("vqa_questions.json", Kind::Json),
            data_fixture("vqa_annotations.json", Kind::Json),
        ],
        |dir| {
            let questions = dir.join("vqa_questions.json");
            formats::vqa_v2(&questions, None).map_err(msg)?;
            formats::vqa_v2(&questions, Some(&dir.join("vqa_annotations.json")))
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn easy_vqa() {
    check(Target::new(
        "easy_vqa",
        vec![data_fixture("easy_vqa_questions.json", Kind::Json)],
        |dir| {
            formats::easy_vqa(&dir.join("easy_vqa_questions.json"))
                .map(drop)
                .map_err(msg)
        },
    ));
}

/// Reads every image of the store in `dir` (and exports it as BUTD TSV, which reads them again).
fn read_store(dir: &Path) -> Result<usize, String> {
    let reader = StoreReader::open(dir).map_err(msg)?;
    for entry in reader.entries() {
        reader.get(&entry.id).map_err(msg)?;
    }
    tsv::export(&reader, &dir.join("export.tsv")).map_err(msg)
}

#[test]
fn butd_tsv() {
    check(Target::new(
        "butd_tsv",
        vec![Input::fixture(
            "butd_sample.tsv",
            repo("crates/tuwen-regions/tests/fixtures/butd_sample.tsv"),
            Kind::Lines,
        )],
        |dir| {
            let path = dir.join("butd_sample.tsv");
            let strict = dir.join("strict");
            let mut writer = StoreWriter::open(&strict, StoreDtype::F32, 2).map_err(msg)?;
            strict_mode_ok(tsv::import(&path, &mut writer, tsv::OnMalformed::Fail))?;
            drop(writer);

            let store = dir.join("store");
            let mut writer = StoreWriter::open(&store, StoreDtype::F16, 2).map_err(msg)?;
            let summary = tsv::import(&path, &mut writer, tsv::OnMalformed::Skip).map_err(msg)?;
            writer.finish().map_err(msg)?;
            if summary.imported > 0 {
                let read = read_store(&store)?;
                assert_eq!(read, summary.imported, "every imported image reads back");
            }
            Ok(())
        },
    ));
}

fn regions(n: usize, seed: f32) -> RegionFeatures {
    let (dim, classes) = (5, 3);
    RegionFeatures {
        image_size: [64, 48],
        boxes: (0..n)
            .map(|i| BoxXyxy::new(i as f32, 1.0, 10.0 + i as f32, 20.0))
            .collect(),
        features: (0..n * dim).map(|i| seed + i as f32 * 0.5).collect(),
        dim,
        global: (0..dim).map(|i| seed - i as f32).collect(),
        class_probs: (0..n * classes)
            .map(|i| (i % classes) as f32 * 0.25)
            .collect(),
        classes,
        scores: (0..n).map(|i| 0.5 + i as f32 / 10.0).collect(),
    }
}

/// The files of two small valid stores (f32 and f16, three images in two shards each). Every
/// value is exact in f16, so both read back exactly.
fn store_inputs() -> Vec<Input> {
    let root = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (sub, dtype) in [("f32", StoreDtype::F32), ("f16", StoreDtype::F16)] {
        let dir = root.path().join(sub);
        let mut writer = StoreWriter::open(&dir, dtype, 2).unwrap();
        for (i, n) in [2usize, 0, 3].into_iter().enumerate() {
            writer
                .add(&format!("img{i}"), regions(n, i as f32))
                .unwrap();
        }
        writer.finish().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != ".lock")
            .collect();
        names.sort();
        for name in names {
            let kind = match name.as_str() {
                "meta.json" => Kind::Json,
                "index.jsonl" => Kind::Lines,
                _ => Kind::SafeTensors,
            };
            inputs.push(Input::fixture(
                format!("{sub}/{name}"),
                dir.join(&name),
                kind,
            ));
        }
    }
    inputs
}

#[test]
fn feature_store() {
    check(Target::new("feature_store", store_inputs(), |dir| {
        let mut first_error = None;
        for (sub, dtype) in [("f32", StoreDtype::F32), ("f16", StoreDtype::F16)] {
            let store = dir.join(sub);
            if let Err(e) = read_store(&store) {
                first_error.get_or_insert(e);
            }
            // A writer resuming the (possibly damaged) store: if it accepts it, what it adds
            // must read back.
            let resumed = StoreWriter::open(&store, dtype, 2).and_then(|mut w| {
                w.add("added", regions(2, 7.0))?;
                w.finish()
            });
            match resumed {
                Ok(()) => {
                    let reader = StoreReader::open(&store).map_err(msg);
                    let added = reader.and_then(|r| r.get("added").map_err(msg));
                    assert_eq!(
                        added,
                        Ok(regions(2, 7.0)),
                        "a resumed writer accepted {sub}, but its image does not read back"
                    );
                }
                Err(e) => {
                    first_error.get_or_insert(msg(e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }));
}

fn parity_fixture(name: &str, kind: Kind) -> Input {
    Input::fixture(
        name,
        repo(&format!(
            "crates/tuwen-cli/tests/fixtures/parity/bert_tiny/{name}"
        )),
        kind,
    )
}

#[test]
fn safetensors_read_tensors() {
    check(Target::new(
        "safetensors_read_tensors",
        vec![
            parity_fixture("inputs.safetensors", Kind::SafeTensors),
            parity_fixture("expected.safetensors", Kind::SafeTensors),
        ],
        |dir| {
            for name in ["inputs.safetensors", "expected.safetensors"] {
                tuwen_fusion::weights::read_tensors(&dir.join(name)).map_err(msg)?;
            }
            Ok(())
        },
    ));
}

#[test]
fn bert_checkpoint() {
    // The checkpoint is mutated; the config stays valid (see `bert_config` for the config:
    // building a model from a mutated config would measure Burn's allocator, not a parser).
    let config = parity_fixture("config.json", Kind::Json);
    check(Target::new(
        "bert_checkpoint",
        vec![parity_fixture("model.safetensors", Kind::SafeTensors)],
        move |dir| {
            std::fs::write(dir.join("config.json"), &config.bytes).map_err(msg)?;
            tuwen_fusion::BertModel::from_pretrained(dir, &tuwen_testkit::flex())
                .map(drop)
                .map_err(msg)
        },
    ));
}

/// A checkpoint for a `Linear(3 -> 2)` in reference naming (`layer.` prefix, a counter the
/// model does not use), as the vision loaders read theirs.
fn linear_checkpoint_bytes() -> Vec<u8> {
    use safetensors::{Dtype, tensor::TensorView};
    let weight: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    let bias: Vec<u8> = [0.5f32, -0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let counter = 7i64.to_le_bytes().to_vec();
    let views = vec![
        (
            "layer.weight",
            TensorView::new(Dtype::F32, vec![2, 3], &weight).unwrap(),
        ),
        (
            "layer.bias",
            TensorView::new(Dtype::F32, vec![2], &bias).unwrap(),
        ),
        (
            "layer.num_batches_tracked",
            TensorView::new(Dtype::I64, vec![], &counter).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn renamed_checkpoint() {
    check(Target::new(
        "renamed_checkpoint",
        vec![Input::new(
            "model.safetensors",
            linear_checkpoint_bytes(),
            Kind::SafeTensors,
        )],
        |dir| {
            let device = tuwen_testkit::flex();
            let model = burn::nn::LinearConfig::new(3, 2).init(&device);
            tuwen_weights::load_renamed(model, &dir.join("model.safetensors"), "Linear", |key| {
                match key {
                    k if k.ends_with("num_batches_tracked") => None,
                    k => Some(k.strip_prefix("layer.").unwrap_or(k).to_string()),
                }
            })
            .map(drop)
            .map_err(msg)
        },
    ));
}

#[test]
fn bert_config() {
    check(Target::new(
        "bert_config",
        vec![parity_fixture("config.json", Kind::Json)],
        |dir| {
            tuwen_fusion::BertConfig::from_json_file(dir.join("config.json"))
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn synthetic_weights() {
    // The first tensors of a committed synthetic spec (the whole MobileNetV2 is 3.5M values per
    // case).
    let path = repo(
        "crates/tuwen-cli/tests/fixtures/parity/torchvision_mobilenet_v2/model.synthetic.json",
    );
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    spec["tensors"].as_array_mut().unwrap().truncate(7);
    let spec = serde_json::to_vec(&spec).unwrap();
    check(Target::new(
        "synthetic_weights",
        vec![Input::new("model.synthetic.json", spec, Kind::Json)],
        |dir| {
            tuwen_weights::synthetic::materialize(&dir.join("model.synthetic.json"))
                .map(drop)
                .map_err(msg)
        },
    ));
}

#[test]
fn train_config() {
    let inputs = ["default.toml", "vilbert.toml", "visual_bert_minilm.toml"]
        .into_iter()
        .map(|name| Input::fixture(name, repo(&format!("configs/{name}")), Kind::Toml))
        .collect();
    check(Target::new("train_config", inputs, |dir| {
        for name in ["default.toml", "vilbert.toml", "visual_bert_minilm.toml"] {
            tuwen_train::config::TrainConfig::load(&dir.join(name)).map_err(msg)?;
        }
        Ok(())
    }));
}

/// A small RGB test picture encoded as PNG and JPEG.
fn pictures() -> &'static (Vec<u8>, Vec<u8>) {
    static PICTURES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    PICTURES.get_or_init(|| {
        let image = image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 12) as u8, (y * 17) as u8, ((x + y) * 5) as u8])
        });
        let mut png = Vec::new();
        image
            .write_with_encoder(image::codecs::png::PngEncoder::new(&mut png))
            .unwrap();
        let mut jpeg = Vec::new();
        image
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut jpeg, 85,
            ))
            .unwrap();
        (png, jpeg)
    })
}

fn load_image(path: &Path) -> Result<(), String> {
    let preprocess = tuwen_vision::Preprocess {
        // Small output: a mutated header can make the picture 65535 pixels tall, and resizing
        // that to a large shorter side is most of a case's time.
        resize_shorter: 6,
        crop: 4,
        ..tuwen_vision::Preprocess::default()
    };
    let batch = preprocess
        .load_batch(&[path], &tuwen_testkit::flex())
        .map_err(msg)?;
    assert_eq!(batch.dims(), [1, 3, 4, 4]);
    Ok(())
}

#[test]
fn image_png() {
    check(Target::new(
        "image_png",
        vec![Input::new("picture.png", pictures().0.clone(), Kind::Png)],
        |dir| load_image(&dir.join("picture.png")),
    ));
}

#[test]
fn image_jpeg() {
    check(Target::new(
        "image_jpeg",
        vec![Input::new("picture.jpg", pictures().1.clone(), Kind::Jpeg)],
        |dir| load_image(&dir.join("picture.jpg")),
    ));
}
