//! Loaders for the caption and VQA formats users have, each tested on small files in the exact
//! format: COCO captions and instances JSON, Flickr30k/COCO Karpathy split JSON,
//! Conceptual-Captions-style TSV, VQA v2 questions + annotations, easy-VQA. Errors name the file
//! and, for line formats, the line; malformed TSV lines can be skipped and counted instead.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tuwen_io::PathContext;
use tuwen_regions::BoxXyxy;

use crate::scene::Split;

/// Errors of the loaders.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read (the error names it).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// The file is not in the expected format (with line and column for JSON).
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What to do with a malformed line of a line-based format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMalformed {
    /// Stop with an error naming the file and line.
    Fail,
    /// Skip the line and count it.
    Skip,
}

/// One image-caption pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptionRecord {
    /// Image id (as a string, whatever the source uses).
    pub image_id: String,
    /// Image file name, path or URL.
    pub image: String,
    /// The caption.
    pub caption: String,
    /// Split, when the source has one (Karpathy: `train`, `val`, `test`, `restval`; see
    /// [`karpathy_split`]).
    pub split: Option<String>,
}

/// One question with its answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VqaRecord {
    /// Image id.
    pub image_id: String,
    /// Question id (empty when the source has none).
    pub question_id: String,
    /// The question.
    pub question: String,
    /// Every annotator's answer (one for single-answer sets).
    pub answers: Vec<String>,
}

/// Records of a line format with the number of malformed lines skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded<T> {
    /// The records.
    pub records: Vec<T>,
    /// Malformed lines skipped (with [`OnMalformed::Skip`]).
    pub skipped: usize,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, FormatError> {
    let file = tuwen_io::open(path)?;
    serde_json::from_reader(BufReader::new(file)).map_err(|e| FormatError::Malformed {
        path: path.to_path_buf(),
        line: e.line(),
        reason: format!("column {}: {e}", e.column()),
    })
}

fn id_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
struct CocoImage {
    id: serde_json::Value,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoCaption {
    image_id: serde_json::Value,
    caption: String,
}

#[derive(Deserialize)]
struct CocoCaptions {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

/// COCO `captions_*.json`: one record per annotation, joined with its image's file name.
pub fn coco_captions(path: &Path) -> Result<Vec<CaptionRecord>, FormatError> {
    let data: CocoCaptions = read_json(path)?;
    let files: HashMap<String, String> = data
        .images
        .into_iter()
        .map(|i| (id_string(&i.id), i.file_name))
        .collect();
    data.annotations
        .into_iter()
        .map(|a| {
            let image_id = id_string(&a.image_id);
            let image = files
                .get(&image_id)
                .cloned()
                .ok_or_else(|| FormatError::Malformed {
                    path: path.to_path_buf(),
                    line: 0,
                    reason: format!("caption of unknown image id {image_id}"),
                })?;
            Ok(CaptionRecord {
                image_id,
                image,
                caption: a.caption.trim().to_string(),
                split: None,
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct CocoInstance {
    image_id: serde_json::Value,
    category_id: u32,
    bbox: [f32; 4],
}

#[derive(Deserialize)]
struct CocoInstances {
    annotations: Vec<CocoInstance>,
}

/// COCO `instances_*.json`: image id -> `(category id, box)` with boxes converted from COCO's
/// `[x, y, w, h]` to xyxy pixels.
pub fn coco_instances(path: &Path) -> Result<HashMap<String, Vec<(u32, BoxXyxy)>>, FormatError> {
    let data: CocoInstances = read_json(path)?;
    let mut out: HashMap<String, Vec<(u32, BoxXyxy)>> = HashMap::new();
    for a in data.annotations {
        let [x, y, w, h] = a.bbox;
        out.entry(id_string(&a.image_id))
            .or_default()
            .push((a.category_id, BoxXyxy::from_xywh(x, y, w, h)));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

#[derive(Deserialize)]
struct KarpathyImage {
    filename: String,
    #[serde(default)]
    filepath: Option<String>,
    split: String,
    sentences: Vec<KarpathySentence>,
    /// Index in the Karpathy file (both datasets).
    imgid: serde_json::Value,
    /// COCO image id (COCO file only; preferred as the image id when present).
    #[serde(default)]
    cocoid: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Karpathy {
    images: Vec<KarpathyImage>,
}

/// Karpathy split JSON (`dataset_flickr30k.json`, `dataset_coco.json`): one record per sentence,
/// with the split (`train`, `val`, `test`, `restval`; see [`karpathy_split`]). The image is
/// `filepath/filename` when the file has a `filepath` (COCO: `val2014/COCO_val2014_...jpg`), else
/// `filename` (Flickr30k: `1000092795.jpg`); the image id is the COCO id when present, else
/// `imgid`.
pub fn karpathy(path: &Path) -> Result<Vec<CaptionRecord>, FormatError> {
    let data: Karpathy = read_json(path)?;
    Ok(data
        .images
        .into_iter()
        .flat_map(|img| {
            let image = match img.filepath.as_deref().map(|d| d.trim_end_matches('/')) {
                Some(dir) if !dir.is_empty() => format!("{dir}/{}", img.filename),
                _ => img.filename.clone(),
            };
            let image_id = id_string(img.cocoid.as_ref().unwrap_or(&img.imgid));
            let split = img.split.clone();
            img.sentences.into_iter().map(move |s| CaptionRecord {
                image_id: image_id.clone(),
                image: image.clone(),
                caption: s.raw.trim().to_string(),
                split: Some(split.clone()),
            })
        })
        .collect())
}

/// The split a Karpathy `split` value names: `train` and `restval` (the COCO validation images
/// Karpathy moved to training) are [`Split::Train`], `val` is [`Split::Validation`], `test` is
/// [`Split::Test`]; anything else is `None`.
pub fn karpathy_split(name: &str) -> Option<Split> {
    match name {
        "train" | "restval" => Some(Split::Train),
        "val" => Some(Split::Validation),
        "test" => Some(Split::Test),
        _ => None,
    }
}

/// Conceptual-Captions-style TSV: `caption<TAB>image` per line (image: URL or path), the image
/// id being the 0-based line index among valid lines. Lines without exactly two non-empty fields
/// are malformed.
pub fn cc_tsv(
    path: &Path,
    on_malformed: OnMalformed,
) -> Result<Loaded<CaptionRecord>, FormatError> {
    let reader = BufReader::new(tuwen_io::open(path)?);
    let mut out = Loaded {
        records: Vec::new(),
        skipped: 0,
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line.at(path)?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            [caption, image] if !caption.trim().is_empty() && !image.trim().is_empty() => {
                out.records.push(CaptionRecord {
                    image_id: out.records.len().to_string(),
                    image: image.trim().to_string(),
                    caption: caption.trim().to_string(),
                    split: None,
                })
            }
            _ => match on_malformed {
                OnMalformed::Fail => {
                    return Err(FormatError::Malformed {
                        path: path.to_path_buf(),
                        line: n + 1,
                        reason: format!(
                            "expected caption<TAB>image, found {} field(s)",
                            fields.len()
                        ),
                    });
                }
                OnMalformed::Skip => out.skipped += 1,
            },
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct VqaQuestion {
    image_id: serde_json::Value,
    question_id: serde_json::Value,
    question: String,
}

#[derive(Deserialize)]
struct VqaQuestions {
    questions: Vec<VqaQuestion>,
}

#[derive(Deserialize)]
struct VqaAnswer {
    answer: String,
}

#[derive(Deserialize)]
struct VqaAnnotation {
    question_id: serde_json::Value,
    answers: Vec<VqaAnswer>,
}

#[derive(Deserialize)]
struct VqaAnnotations {
    annotations: Vec<VqaAnnotation>,
}

/// VQA v2: `v2_OpenEnded_mscoco_*_questions.json` joined with `v2_mscoco_*_annotations.json`
/// (pass `None` for the test split, which has no annotations).
pub fn vqa_v2(questions: &Path, annotations: Option<&Path>) -> Result<Vec<VqaRecord>, FormatError> {
    let q: VqaQuestions = read_json(questions)?;
    let answers: HashMap<String, Vec<String>> = match annotations {
        Some(path) => {
            let a: VqaAnnotations = read_json(path)?;
            a.annotations
                .into_iter()
                .map(|a| {
                    (
                        id_string(&a.question_id),
                        a.answers.into_iter().map(|x| x.answer).collect(),
                    )
                })
                .collect()
        }
        None => HashMap::new(),
    };
    q.questions
        .into_iter()
        .map(|q| {
            let question_id = id_string(&q.question_id);
            let answers = match (annotations, answers.get(&question_id)) {
                (None, _) => Vec::new(),
                (Some(_), Some(a)) => a.clone(),
                (Some(path), None) => {
                    return Err(FormatError::Malformed {
                        path: path.to_path_buf(),
                        line: 0,
                        reason: format!("no annotation for question {question_id}"),
                    });
                }
            };
            Ok(VqaRecord {
                image_id: id_string(&q.image_id),
                question_id,
                question: q.question,
                answers,
            })
        })
        .collect()
}

/// easy-VQA `questions.json`: `[[question, answer, image_id], ...]` (from the `easy_vqa` asset).
pub fn easy_vqa(path: &Path) -> Result<Vec<VqaRecord>, FormatError> {
    let rows: Vec<(String, String, serde_json::Value)> = read_json(path)?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (question, answer, image_id))| VqaRecord {
            image_id: id_string(&image_id),
            question_id: i.to_string(),
            question,
            answers: vec![answer],
        })
        .collect())
}

/// VQA soft score of an answer given every annotator's answers: the official VQA accuracy
/// ([`tuwen_eval::vqa::soft_score`]), `min(1, agreeing / 3)` averaged over each annotator left out
/// in turn. With 10 answers, 1, 2, 3 and 4+ agreeing answers score 0.3, 0.6, 0.9 and 1.0. Strings
/// are compared exactly (normalise both sides alike, e.g. with
/// [`tuwen_eval::vqa::normalize_answer`]); with a single answer (easy-VQA) every candidate scores 0.
pub fn soft_score(answers: &[String], candidate: &str) -> f32 {
    tuwen_eval::vqa::soft_score(answers, candidate)
}
