//! `tuwen vqa`: a fine-tuned VQA run answers one question about image files, through the same
//! image pipeline it was trained with (`tuwen_train::vqa::Vqa`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use tuwen_train::run_dir::Which;
use tuwen_train::vqa::Vqa;

/// What `tuwen vqa` was asked.
pub struct VqaArgs<'a> {
    /// The fine-tuned run directory.
    pub run: &'a Path,
    /// The question.
    pub question: &'a str,
    /// Which checkpoint.
    pub which: Which,
    /// Answers per image.
    pub top: usize,
    /// JSON lines instead of text.
    pub json: bool,
    /// The images.
    pub images: &'a [PathBuf],
    /// The device.
    pub device: &'a Device,
}

/// Answers `args.question` for every image on `out`; an image that cannot be read or answered
/// is reported on `err` and counted, the others are still answered. Returns the failures.
pub fn answer(args: &VqaArgs<'_>, out: &mut impl Write, err: &mut impl Write) -> Result<usize> {
    let vqa = Vqa::load_on(args.run, args.which, args.device).map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for path in args.images {
        let answers = tuwen_vision::load_rgb(path)
            .map_err(|e| e.to_string())
            .and_then(|image| vqa.answer_top(&image, args.question, args.top));
        match answers {
            Ok(answers) if args.json => {
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "question": args.question,
                    "answers": answers,
                });
                writeln!(out, "{line}")?;
            }
            Ok(answers) => {
                writeln!(out, "{}", path.display())?;
                for a in answers {
                    writeln!(out, "  {:.4}  {}", a.score, a.answer)?;
                }
            }
            Err(e) => {
                writeln!(err, "error: {}: {e}", path.display())?;
                failed += 1;
            }
        }
    }
    Ok(failed)
}
