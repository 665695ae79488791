//! Evaluation metrics for tuwen, with no Burn dependency so that scoring a results file builds in
//! seconds.
//!
//! * [`vqa`]: the official VQA accuracy, equal to GT-Vision-Lab/VQA's `vqaEval.py` (answer
//!   normalisation, leave-one-annotator-out accuracy, per-type averages, the official rounding),
//!   and the soft score training uses as a target.

pub mod vqa;
