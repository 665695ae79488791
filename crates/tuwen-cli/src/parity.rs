//! `tuwen parity DIR`: numerical parity of a tuwen model with a reference implementation.
//!
//! A fixture directory holds `config.json` (the reference config; `architectures[0]` names the
//! model), `model.safetensors` (the reference state dict, reference key names),
//! `inputs.safetensors` (forward arguments named as the reference's `forward()`; HF mask convention)
//! and `expected.safetensors` (reference outputs named as the reference's output fields).
//! Every expected tensor is compared; an output tuwen cannot produce is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use tuwen_fusion::heads::MlmHead;
use tuwen_fusion::lxmert::LxmertOutput;
use tuwen_fusion::mask::HF_MASK_VALUE;
use tuwen_fusion::vilbert::ViLBertOutput;
use tuwen_fusion::visual_bert::VisualBertOutput;
use tuwen_fusion::weights::read_tensors;
use tuwen_fusion::{
    AttentionMask, BertConfig, LxmertConfig, LxmertInput, ViLBertConfig, ViLBertInput,
    VisualBertConfig, VisualBertInput,
};
use tuwen_objectives::itm::{MatchLabel, Polarity, itm_loss};
use tuwen_objectives::mlm::{IGNORE, mlm_loss};
use tuwen_regions::RoiAlign;
use tuwen_vision::Backbone;
use tuwen_weights::compare::{self, NonFinite};

/// One compared output.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Output name (as in `expected.safetensors`).
    pub name: String,
    /// Max absolute difference, or why it could not be compared.
    pub result: Result<f32, String>,
}

/// The outcome of a parity run.
#[derive(Clone, Debug)]
pub struct ParityReport {
    /// `architectures[0]` of the fixture.
    pub architecture: String,
    /// Tolerance used.
    pub tolerance: f32,
    /// Per-output comparisons, in name order.
    pub comparisons: Vec<Comparison>,
}

impl ParityReport {
    /// Whether there was at least one expected output, and every one was produced, had the
    /// right shape, could be read and is within tolerance (a NaN or infinity never is).
    pub fn passed(&self) -> bool {
        !self.comparisons.is_empty()
            && self
                .comparisons
                .iter()
                .all(|c| matches!(c.result, Ok(d) if d <= self.tolerance))
    }
}

impl std::fmt::Display for ParityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} (tolerance {:e})", self.architecture, self.tolerance)?;
        for c in &self.comparisons {
            match &c.result {
                Ok(d) => {
                    let verdict = if *d <= self.tolerance { "ok" } else { "FAIL" };
                    writeln!(f, "  {:<28} max |diff| {d:.3e}  {verdict}", c.name)?;
                }
                Err(why) => writeln!(f, "  {:<28} FAIL: {why}", c.name)?,
            }
        }
        write!(f, "{}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// Forward inputs of a fixture, with typed accessors that name the file on error.
struct Inputs {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
    device: Device,
}

impl Inputs {
    fn int2(&self, name: &str) -> Result<Option<Tensor<2, Int>>> {
        self.tensors
            .get(name)
            .map(|data| {
                if data.shape().len() != 2 {
                    bail!(
                        "{}: {name} must be 2-d, has shape {:?}",
                        self.path.display(),
                        data.shape().to_vec()
                    );
                }
                Ok(Tensor::from_data(data.clone(), &self.device))
            })
            .transpose()
    }

    fn float3(&self, name: &str) -> Result<Tensor<3>> {
        let data = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: missing input {name}", self.path.display()))?;
        if data.shape().len() != 3 {
            bail!(
                "{}: {name} must be 3-d, has shape {:?}",
                self.path.display(),
                data.shape().to_vec()
            );
        }
        Ok(Tensor::from_data(data.clone(), &self.device))
    }

    fn float4(&self, name: &str) -> Result<Tensor<4>> {
        let data = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: missing input {name}", self.path.display()))?;
        if data.shape().len() != 4 {
            bail!(
                "{}: {name} must be 4-d, has shape {:?}",
                self.path.display(),
                data.shape().to_vec()
            );
        }
        Ok(Tensor::from_data(data.clone(), &self.device))
    }

    /// Replaces `slot` (a default) with the optional input `name` when the fixture has it.
    fn int2_into(&self, name: &str, slot: &mut Tensor<2, Int>) -> Result<()> {
        if let Some(t) = self.int2(name)? {
            *slot = t;
        }
        Ok(())
    }

    /// An optional integer input as host values (label arguments).
    fn host_i64(&self, name: &str) -> Result<Option<Vec<i64>>> {
        self.tensors
            .get(name)
            .map(|data| {
                data.clone()
                    .try_into_vec_as::<i64>()
                    .map_err(|e| anyhow::anyhow!("{}: {name}: {e:?}", self.path.display()))
            })
            .transpose()
    }

    fn required_int2(&self, name: &str) -> Result<Tensor<2, Int>> {
        self.int2(name)?
            .with_context(|| format!("{}: missing input {name}", self.path.display()))
    }
}

/// The outputs a model produced, by reference name.
type Outputs = BTreeMap<&'static str, TensorData>;

/// Runs the fixture in `dir` on `device` and compares against `expected.safetensors`.
pub fn run(dir: &Path, device: &Device, tolerance: f32) -> Result<ParityReport> {
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let architecture = config["architectures"][0]
        .as_str()
        .with_context(|| format!("{}: no architectures[0]", config_path.display()))?
        .to_string();
    let inputs_path = dir.join("inputs.safetensors");
    let inputs = Inputs {
        tensors: read_tensors(&inputs_path)?,
        path: inputs_path,
        device: device.clone(),
    };
    // Large models ship a synthetic state dict (tensor list + seed) instead of the checkpoint.
    let synthetic = dir.join("model.synthetic.json");
    let scratch;
    let weights = if !dir.join("model.safetensors").exists() && synthetic.is_file() {
        scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
        let path = scratch.path().join("model.safetensors");
        std::fs::write(&path, tuwen_weights::synthetic::materialize(&synthetic)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        path
    } else {
        dir.join("model.safetensors")
    };
    let outputs = match architecture.as_str() {
        "BertModel" => bert_model(&config_path, &weights, &inputs, device)?,
        "VisualBertModel" => visual_bert_model(&config_path, &weights, &inputs, device)?,
        "VisualBertForPreTraining" => {
            visual_bert_pretraining(&config_path, &weights, &inputs, device)?
        }
        "LxmertModel" => lxmert_model(&config_path, &weights, &inputs, device)?,
        "LxmertForPreTraining" => lxmert_pretraining(&config_path, &weights, &inputs, device)?,
        "ViLBERTModel" => vilbert_model(&config_path, &weights, &inputs, device)?,
        "ViLBERTForMultiModalPreTraining" => {
            vilbert_pretraining(&config_path, &weights, &inputs, device)?
        }
        "torchvision.ops.roi_align" => roi_align(&config, &inputs)?,
        arch if arch.starts_with("torchvision.") => {
            torchvision_backbone(arch, &config, &weights, &inputs, device)?
        }
        other => bail!(
            "{}: architecture {other} is not supported",
            config_path.display()
        ),
    };
    let expected_path = dir.join("expected.safetensors");
    let expected = read_tensors(&expected_path)?;
    if expected.is_empty() {
        bail!(
            "{}: no expected outputs, nothing to compare",
            expected_path.display()
        );
    }
    let comparisons = expected
        .into_iter()
        .map(|(name, want)| {
            let result = match outputs.get(name.as_str()) {
                None => Err(format!("{architecture} does not produce this output")),
                Some(got) => compare::tensor_data(got, &want, NonFinite::Reject)
                    .map(|d| d.max_abs)
                    .map_err(|e| e.to_string()),
            };
            Comparison { name, result }
        })
        .collect();
    Ok(ParityReport {
        architecture,
        tolerance,
        comparisons,
    })
}

fn bert_model(config: &Path, weights: &Path, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    let model = BertConfig::from_json_file(config)?
        .init(device)
        .load_hf_safetensors(weights)?;
    let ids = inputs.required_int2("input_ids")?;
    let mask = inputs
        .int2("attention_mask")?
        .unwrap_or_else(|| ids.ones_like());
    let types = inputs
        .int2("token_type_ids")?
        .unwrap_or_else(|| ids.zeros_like());
    let out = model.forward(ids, types, &AttentionMask::padding(mask, HF_MASK_VALUE));
    Ok(BTreeMap::from([
        ("last_hidden_state", out.last_hidden_state.into_data()),
        ("pooler_output", out.pooler_output.into_data()),
    ]))
}

/// HF `VisualBertModel.forward` arguments, with HF's defaults for the optional ones.
fn visual_bert_input(inputs: &Inputs) -> Result<VisualBertInput> {
    let mut input = VisualBertInput::new(
        inputs.required_int2("input_ids")?,
        inputs.float3("visual_embeds")?,
    );
    inputs.int2_into("attention_mask", &mut input.attention_mask)?;
    inputs.int2_into("token_type_ids", &mut input.token_type_ids)?;
    inputs.int2_into("visual_attention_mask", &mut input.visual_attention_mask)?;
    inputs.int2_into("visual_token_type_ids", &mut input.visual_token_type_ids)?;
    Ok(input)
}

fn visual_bert_model(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = VisualBertConfig::from_json_file(config)?
        .init(device)
        .load_hf_safetensors(weights)?;
    Ok(visual_bert_outputs(
        model.try_forward(visual_bert_input(inputs)?)?,
    ))
}

/// `VisualBertModel` outputs by HF name.
fn visual_bert_outputs(out: VisualBertOutput) -> Outputs {
    BTreeMap::from([
        ("last_hidden_state", out.last_hidden_state.into_data()),
        ("pooler_output", out.pooler_output.into_data()),
    ])
}

fn visual_bert_pretraining(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = VisualBertConfig::from_json_file(config)?
        .init_pretraining(device)
        .load_hf_safetensors(weights)?;
    let input = visual_bert_input(inputs)?;
    model.visual_bert.check_input(&input)?;
    let out = model.forward(input);
    let words = model
        .visual_bert
        .embeddings
        .text
        .word_embeddings
        .weight
        .val();
    let loss = pretraining_loss(
        inputs,
        &model.mlm,
        out.encoder.last_hidden_state.clone(),
        words,
        (
            "sentence_image_labels",
            out.seq_relationship_logits.clone(),
            Polarity::VISUAL_BERT,
        ),
    )?;
    let mut outputs = visual_bert_outputs(out.encoder);
    outputs.insert("prediction_logits", out.prediction_logits.into_data());
    outputs.insert(
        "seq_relationship_logits",
        out.seq_relationship_logits.into_data(),
    );
    if let Some(loss) = loss {
        outputs.insert("loss", loss);
    }
    Ok(outputs)
}

/// Reference `BertModel.forward` arguments of `vilbert.py`, with its defaults.
fn vilbert_input(inputs: &Inputs) -> Result<ViLBertInput> {
    let mut input = ViLBertInput::new(
        inputs.required_int2("input_ids")?,
        inputs.float3("image_feat")?,
        inputs.float3("image_loc")?,
    );
    inputs.int2_into("token_type_ids", &mut input.token_type_ids)?;
    inputs.int2_into("attention_mask", &mut input.attention_mask)?;
    inputs.int2_into("image_attention_mask", &mut input.image_attention_mask)?;
    Ok(input)
}

fn vilbert_model(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = ViLBertConfig::from_json_file(config)?
        .init(device)
        .load_safetensors(weights)?;
    Ok(vilbert_outputs(model.try_forward(vilbert_input(inputs)?)?))
}

/// ViLBERT encoder outputs by reference name.
fn vilbert_outputs(out: ViLBertOutput) -> Outputs {
    BTreeMap::from([
        ("sequence_output_t", out.sequence_output_t.into_data()),
        ("sequence_output_v", out.sequence_output_v.into_data()),
        ("pooled_output_t", out.pooled_output_t.into_data()),
        ("pooled_output_v", out.pooled_output_v.into_data()),
    ])
}

fn vilbert_pretraining(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = ViLBertConfig::from_json_file(config)?
        .init_pretraining(device)
        .load_safetensors(weights)?;
    let input = vilbert_input(inputs)?;
    model.bert.check_input(&input)?;
    let out = model.forward(input);
    let mut outputs = vilbert_outputs(out.encoder);
    outputs.insert("prediction_scores_t", out.prediction_scores_t.into_data());
    outputs.insert("prediction_scores_v", out.prediction_scores_v.into_data());
    outputs.insert(
        "seq_relationship_score",
        out.seq_relationship_score.into_data(),
    );
    Ok(outputs)
}

/// HF `LxmertModel.forward` arguments, with HF's defaults.
fn lxmert_input(inputs: &Inputs) -> Result<LxmertInput> {
    let mut input = LxmertInput::new(
        inputs.required_int2("input_ids")?,
        inputs.float3("visual_feats")?,
        inputs.float3("visual_pos")?,
    );
    inputs.int2_into("token_type_ids", &mut input.token_type_ids)?;
    inputs.int2_into("attention_mask", &mut input.attention_mask)?;
    inputs.int2_into("visual_attention_mask", &mut input.visual_attention_mask)?;
    Ok(input)
}

fn lxmert_model(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = LxmertConfig::from_json_file(config)?
        .init(device)
        .load_hf_safetensors(weights)?;
    Ok(lxmert_outputs(model.try_forward(lxmert_input(inputs)?)?))
}

/// `LxmertModel` outputs by HF name.
fn lxmert_outputs(out: LxmertOutput) -> Outputs {
    BTreeMap::from([
        ("language_output", out.language_output.into_data()),
        ("vision_output", out.vision_output.into_data()),
        ("pooled_output", out.pooled_output.into_data()),
    ])
}

fn lxmert_pretraining(
    config: &Path,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let model = LxmertConfig::from_json_file(config)?
        .init_pretraining(device)
        .load_hf_safetensors(weights)?;
    let input = lxmert_input(inputs)?;
    model.lxmert.check_input(&input)?;
    let out = model.forward(input);
    let words = model.lxmert.embeddings.word_embeddings.weight.val();
    let loss = pretraining_loss(
        inputs,
        &model.mlm,
        out.encoder.language_output.clone(),
        words,
        (
            "matched_label",
            out.cross_relationship_score.clone(),
            Polarity::LXMERT,
        ),
    )?;
    let mut outputs = lxmert_outputs(out.encoder);
    outputs.insert("prediction_logits", out.prediction_logits.into_data());
    outputs.insert(
        "cross_relationship_score",
        out.cross_relationship_score.into_data(),
    );
    if let Some(qa) = out.question_answering_score {
        outputs.insert("question_answering_score", qa.into_data());
    }
    if let Some(loss) = loss {
        outputs.insert("loss", loss);
    }
    Ok(outputs)
}

/// `torchvision.mobilenet_v2` / `torchvision.resnet{18,34,50,101}`: `pixel_values` -> `logits`.
fn torchvision_backbone(
    arch: &str,
    config: &serde_json::Value,
    weights: &Path,
    inputs: &Inputs,
    device: &Device,
) -> Result<Outputs> {
    let classes = config["num_classes"]
        .as_u64()
        .context("config.json: torchvision fixtures need num_classes")? as usize;
    let model = Backbone::from_torchvision(arch, weights, classes, device)?;
    let logits = model.forward(inputs.float4("pixel_values")?);
    Ok(BTreeMap::from([("logits", logits.into_data())]))
}

/// `torchvision.ops.roi_align`: `input` `[N, C, H, W]`, `boxes` `[K, 5]` -> `output`.
fn roi_align(config: &serde_json::Value, inputs: &Inputs) -> Result<Outputs> {
    let size: Vec<usize> = serde_json::from_value(config["output_size"].clone())
        .context("config.json: output_size must be [h, w]")?;
    let [h, w] = size[..] else {
        bail!("config.json: output_size must be [h, w]");
    };
    let op = RoiAlign {
        output_size: [h, w],
        spatial_scale: config["spatial_scale"]
            .as_f64()
            .context("config.json: spatial_scale")? as f32,
        sampling_ratio: config["sampling_ratio"]
            .as_i64()
            .context("config.json: sampling_ratio")? as i32,
        aligned: config["aligned"]
            .as_bool()
            .context("config.json: aligned")?,
    };
    let boxes = inputs
        .tensors
        .get("boxes")
        .with_context(|| format!("{}: missing input boxes", inputs.path.display()))?;
    let boxes = Tensor::<2>::from_data(boxes.clone(), &inputs.device);
    let output = op.forward(inputs.float4("input")?, boxes)?;
    Ok(BTreeMap::from([("output", output.into_data())]))
}

/// The HF pretraining loss when the fixture carries label arguments: MLM cross-entropy over the
/// positions whose `labels` are not -100, plus the 2-way matching cross-entropy when the matching
/// labels (`pair.0`, in the head's own index convention `pair.2`) are given. `None` without labels.
fn pretraining_loss(
    inputs: &Inputs,
    head: &MlmHead,
    hidden: Tensor<3>,
    word_embeddings: Tensor<2>,
    pair: (&str, Tensor<2>, Polarity),
) -> Result<Option<TensorData>> {
    let (pair_name, pair_logits, polarity) = pair;
    let mlm = inputs.host_i64("labels")?.map(|labels| {
        let positions: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != IGNORE).collect();
        mlm_loss(head, hidden, word_embeddings, &positions, &labels, None)
            .loss
            .loss
    });
    let matching = inputs.host_i64(pair_name)?.map(|ids| {
        let labels: Vec<MatchLabel> = ids.iter().map(|&i| polarity.label(i)).collect();
        itm_loss(pair_logits, &labels, polarity).0.loss
    });
    let total = match (mlm, matching) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    Ok(total.map(|t| {
        let value: f32 = t.into_scalar();
        TensorData::new(vec![value], Vec::<usize>::new())
    }))
}
