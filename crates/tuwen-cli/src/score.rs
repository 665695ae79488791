//! `tuwen score`: scores of a results file with the official metrics of [`tuwen_eval`].

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
