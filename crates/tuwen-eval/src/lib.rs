//! Evaluation metrics for tuwen, with no Burn dependency so that scoring a results file builds in
//! seconds.
//!
//! * [`vqa`]: the official VQA accuracy, equal to GT-Vision-Lab/VQA's `vqaEval.py` (answer
//!   normalisation, leave-one-annotator-out accuracy, per-type averages, the official rounding),
//!   and the soft score training uses as a target.
//! * [`captions`]: the COCO caption metrics, equal to pycocoevalcap 1.2 (BLEU-1..4, ROUGE-L,
//!   CIDEr-D) after its PTB tokenization, which is re-implemented here (no Java): for results
//!   files ([`captions::evaluate`]) and for captions decoded in memory ([`captions::score`]).

pub mod captions;
pub mod vqa;

/// Reads the JSON file at `path` as a `T`; a file that cannot be read is an I/O error naming it,
/// malformed JSON goes through `malformed` with the key at fault (serde_path_to_error) or the
/// parser's message.
fn read_json<T, E>(path: &std::path::Path, malformed: impl Fn(String) -> E) -> Result<T, E>
where
    T: serde::de::DeserializeOwned,
    E: From<tuwen_io::IoError>,
{
    let bytes = tuwen_io::read(path)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        malformed(if key == "." {
            inner.to_string()
        } else {
            format!("key `{key}`: {inner}")
        })
    })?;
    de.end().map_err(|e| malformed(e.to_string()))?;
    Ok(value)
}
