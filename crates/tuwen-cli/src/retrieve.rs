//! `tuwen retrieve` (a run with an ITC head ranks image files for a text, or texts for an image
//! file: ITC top k from a cached embedding index, re-ranked by ITM) and `tuwen eval --task
//! retrieval` (Recall@1/5/10 both ways on held-out data, optionally next to ITM over all pairs).
//! The work is `tuwen_train::retrieve`; this module reads the arguments and prints.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde_json::{Value, json};
use tuwen_train::model::PretrainModel;
use tuwen_train::retrieval::Recalls;
pub use tuwen_train::retrieve::Split;
use tuwen_train::retrieve::{self, IndexStats, Ranking, Retriever};
use tuwen_train::run_dir::Which;

/// What `tuwen retrieve` was asked.
pub struct RetrieveArgs<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// Which checkpoint.
    pub which: Which,
    /// Text -> image: the query.
    pub query: Option<&'a str>,
    /// Text -> image: the directory of image files searched.
    pub images: Option<&'a Path>,
    /// Image -> text: the image file.
    pub image: Option<&'a Path>,
    /// Image -> text: the file of texts searched, one per line.
    pub texts: Option<&'a Path>,
    /// Results to print (the ITC candidates re-ranked by ITM).
    pub k: usize,
    /// One JSON object instead of text.
    pub json: bool,
    /// Index directory (default: `RUN/retrieval-index`).
    pub index: Option<&'a Path>,
    /// The device.
    pub device: &'a Device,
}

/// Which way a search goes.
enum Direction {
    TextToImage {
        query: String,
        images: Vec<std::path::PathBuf>,
    },
    ImageToText {
        image: std::path::PathBuf,
        texts: Vec<String>,
    },
}

/// Runs `tuwen retrieve`: the ranked results on `out`, the index report on `err` (text mode).
/// Bad arguments and inputs are errors naming what is wrong, checked before the model loads.
pub fn retrieve(args: &RetrieveArgs<'_>, out: &mut impl Write, err: &mut impl Write) -> Result<()> {
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    let direction = match (args.query, args.images, args.image, args.texts) {
        (Some(query), Some(dir), None, None) => {
            if query.trim().is_empty() {
                bail!("--query is empty");
            }
            Direction::TextToImage {
                query: query.trim().to_string(),
                images: retrieve::image_files(dir).map_err(anyhow::Error::msg)?,
            }
        }
        (None, None, Some(image), Some(texts)) => {
            if !image.is_file() {
                bail!("{}: no such image file", image.display());
            }
            Direction::ImageToText {
                image: image.to_path_buf(),
                texts: retrieve::read_texts(texts).map_err(anyhow::Error::msg)?,
            }
        }
        _ => bail!(
            "give --images DIR --query TEXT (text -> image) or --image FILE --texts FILE \
             (image -> text)"
        ),
    };
    let mut retriever =
        Retriever::load(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    if let Some(dir) = args.index {
        retriever = retriever.with_index_dir(dir);
    }
    let (ranking, name, what, query) = match &direction {
        Direction::TextToImage { query, images } => (
            retriever.search_images(query, images, args.k),
            "image",
            "text_to_image",
            query.clone(),
        ),
        Direction::ImageToText { image, texts } => (
            retriever.search_texts(image, texts, args.k),
            "text",
            "image_to_text",
            image.display().to_string(),
        ),
    };
    let ranking = ranking.map_err(anyhow::Error::msg)?;
    let run = retriever.run();
    if args.json {
        let results: Vec<Value> = ranking
            .hits
            .iter()
            .map(|h| {
                json!({
                    "rank": h.rank,
                    name: h.item,
                    "index": h.index,
                    "itm": h.itm,
                    "itc": h.itc,
                })
            })
            .collect();
        let line = json!({
            "run": run.dir.path().display().to_string(),
            "step": run.step,
            "model": retriever.model_id(),
            "direction": what,
            "query": query,
            "k": args.k,
            "candidates": ranking.candidates,
            "results": results,
            "index": {"images": ranking.images, "texts": ranking.texts},
        });
        writeln!(out, "{line}")?;
    } else {
        print_ranking(out, &ranking, name, &query, args.k)?;
        writeln!(
            err,
            "index: {}; {}",
            describe(&ranking.images, "image"),
            describe(&ranking.texts, "text")
        )?;
    }
    Ok(())
}

fn print_ranking(
    out: &mut impl Write,
    ranking: &Ranking,
    name: &str,
    query: &str,
    k: usize,
) -> Result<()> {
    let searched = if name == "image" { "images" } else { "texts" };
    writeln!(
        out,
        "{query}: top {} of {} {searched} (ITC top {k}, re-ranked by ITM)",
        ranking.hits.len(),
        ranking.candidates
    )?;
    writeln!(out, "rank     ITM     ITC  {name}")?;
    for h in &ranking.hits {
        writeln!(
            out,
            "{:>4}  {:.4}  {:>6.3}  {}",
            h.rank, h.itm, h.itc, h.item
        )?;
    }
    Ok(())
}

fn describe(stats: &IndexStats, what: &str) -> String {
    let mut s = format!(
        "{} {what}(s) cached, {} computed ({})",
        stats.cached,
        stats.computed,
        stats.path.display()
    );
    if let Some(reset) = &stats.reset {
        s.push_str(&format!(", index rebuilt: {reset}"));
    }
    s
}

/// What `tuwen eval --task retrieval` was asked.
pub struct EvalArgs<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// Which checkpoint.
    pub which: Which,
    /// Held-out split of the run's data (scenes or corpus).
    pub split: Split,
    /// Images evaluated (default: the run's `eval.retrieval_images`, or 100).
    pub images: Option<usize>,
    /// ITM re-ranks the top `k` (default: the run's `eval.retrieval_top_k`).
    pub k: Option<usize>,
    /// Also ITM over all pairs (the cross-encoder baseline), timed on the same set.
    pub all_pairs: bool,
    /// Image files of a COCO caption file instead of the run's data.
    pub image_dir: Option<&'a Path>,
    /// The COCO caption file (`images[].file_name`, `annotations[].{image_id, caption}`).
    pub captions: Option<&'a Path>,
    /// Index directory for the image-file set (default: `RUN/retrieval-index`).
    pub index: Option<&'a Path>,
    /// The device.
    pub device: &'a Device,
}

fn recalls_json(r: &[f32; 3]) -> Value {
    // Recalls are fractions of the queries: 4 decimals, not f32 noise.
    let round = |v: f32| (f64::from(v) * 1e4).round() / 1e4;
    json!({"r1": round(r[0]), "r5": round(r[1]), "r10": round(r[2])})
}

fn scored(recalls: &Recalls, seconds: f64) -> Value {
    json!({
        "image_to_text": recalls_json(&recalls.image_to_text),
        "text_to_image": recalls_json(&recalls.text_to_image),
        "seconds": (seconds * 1000.0).round() / 1000.0,
    })
}

/// Runs `tuwen eval --task retrieval` and returns its JSON report: Recall@1/5/10 both ways with
/// ITC ranking and ITM re-ranking of the top k (the wall time of that evaluation in
/// `seconds`), and with `all_pairs` the same set ranked by ITM over all pairs (`all_pairs`,
/// with its own time).
pub fn eval_retrieval(args: &EvalArgs<'_>) -> Result<Value> {
    if args.k == Some(0) {
        bail!("--k must be at least 1");
    }
    if args.images == Some(0) {
        bail!("--images must be at least 1");
    }
    match (args.image_dir, args.captions) {
        (Some(dir), Some(captions)) => return eval_files(args, dir, captions),
        (None, None) => {}
        _ => bail!("--image-dir and --captions go together"),
    }
    let run = PretrainModel::load(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    if run.model.itc.is_none() {
        bail!(
            "run {} has no ITC head; pretrain with model.itc_dim > 0",
            run.dir.path().display()
        );
    }
    let images = args
        .images
        .unwrap_or(match run.config.eval.retrieval_images {
            0 => 100,
            n => n,
        });
    let k = args.k.unwrap_or(run.config.eval.retrieval_top_k.max(1));
    let data = retrieve::held_out_data(&run, args.device).map_err(anyhow::Error::msg)?;
    let n = data.retrieval_set(args.split, images).0.len();
    if n == 0 {
        bail!("the run's {:?} split has no images to evaluate", args.split);
    }
    let timed = |k: usize| -> Result<(Recalls, f64)> {
        let start = Instant::now();
        let r = retrieve::evaluate_held_out(&run, &data, args.split, images, k, args.device)
            .map_err(anyhow::Error::msg)?;
        Ok((r, start.elapsed().as_secs_f64()))
    };
    let (recalls, seconds) = timed(k)?;
    let mut report = json!({
        "run": run.dir.path().display().to_string(),
        "step": run.step,
        "task": "retrieval",
        "data": format!("{:?}", run.config.data.source).to_lowercase(),
        "split": format!("{:?}", args.split).to_lowercase(),
        "images": n,
        "texts": n,
        "k": k,
    });
    merge(&mut report, scored(&recalls, seconds));
    if args.all_pairs {
        let (all, seconds) = timed(n)?;
        report["all_pairs"] = scored(&all, seconds);
    }
    Ok(report)
}

fn merge(report: &mut Value, more: Value) {
    if let (Some(r), Value::Object(m)) = (report.as_object_mut(), more) {
        r.extend(m);
    }
}

fn eval_files(args: &EvalArgs<'_>, dir: &Path, captions: &Path) -> Result<Value> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let retrieve::CocoPairs {
        images,
        texts,
        text_image,
    } = retrieve::coco_pairs(dir, captions, args.images.unwrap_or(usize::MAX))
        .map_err(anyhow::Error::msg)?;
    let mut retriever =
        Retriever::load(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    if let Some(index) = args.index {
        retriever = retriever.with_index_dir(index);
    }
    let k = args
        .k
        .unwrap_or(retriever.run().config.eval.retrieval_top_k.max(1));
    let timed = |k: usize| -> Result<(Recalls, f64)> {
        let start = Instant::now();
        let r = retriever
            .evaluate(&images, &texts, &text_image, k)
            .map_err(anyhow::Error::msg)?;
        Ok((r, start.elapsed().as_secs_f64()))
    };
    let (recalls, seconds) = timed(k)?;
    let run = retriever.run();
    let mut report = json!({
        "run": run.dir.path().display().to_string(),
        "step": run.step,
        "task": "retrieval",
        "data": "files",
        "captions": captions.display().to_string(),
        "images": images.len(),
        "texts": texts.len(),
        "k": k,
    });
    merge(&mut report, scored(&recalls, seconds));
    if args.all_pairs {
        let (all, seconds) = timed(images.len().max(texts.len()))?;
        report["all_pairs"] = scored(&all, seconds);
    }
    Ok(report)
}
