//! `tuwen score`: scores of a results file with the official metrics of [`tuwen_eval`] (VQA
//! accuracy, COCO caption metrics).

use std::path::Path;

use anyhow::Context;

/// `tuwen score vqa`: the official VQA accuracy (GT-Vision-Lab/VQA's `vqaEval.py`) of a results
/// file (`[{"question_id", "answer"}]`) against VQA v2 questions and annotations files, as pretty
/// JSON with the official keys `overall`, `perAnswerType`, `perQuestionType` and `perQuestion`
/// (percentages rounded to 2 decimals).
pub fn vqa(questions: &Path, annotations: &Path, results: &Path) -> anyhow::Result<String> {
    let scores = tuwen_eval::vqa::evaluate(questions, annotations, results)?;
    serde_json::to_string_pretty(&scores).context("serialising the VQA scores")
}

/// `tuwen score captions`: the COCO caption metrics of pycocoevalcap 1.2 (BLEU-1..4, ROUGE-L,
/// CIDEr-D after its PTB tokenization) of a results file (`[{"image_id", "caption"}]`) against
/// COCO caption annotations, for the images that have a result, as pretty JSON with the keys of
/// `COCOEvalCap.eval`: `Bleu_1`, `Bleu_2`, `Bleu_3`, `Bleu_4`, `ROUGE_L`, `CIDEr`.
pub fn captions(references: &Path, results: &Path) -> anyhow::Result<String> {
    let evaluation = tuwen_eval::captions::evaluate(references, results)?;
    serde_json::to_string_pretty(&evaluation.scores).context("serialising the caption scores")
}
