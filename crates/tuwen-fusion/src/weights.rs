//! The HF / reference -> tuwen weight-name mapping of every fusion model, kept in one place.
//! The strict loading machinery is `tuwen-weights`, re-exported here.

pub use tuwen_weights::{
    HfMapping, LoadError, load_hf, load_renamed, read_config, read_json, read_tensors,
};

/// Renames shared by every BERT-style encoder stack: HF `encoder.layer.N.{attention.self,
/// attention.output, intermediate, output}` -> tuwen `encoder.layers.N.{attention.self_attn,
/// attention.output, ffn.intermediate, ffn.output}`, and `LayerNorm` -> `layer_norm`.
macro_rules! encoder_renames {
    () => {
        encoder_renames!(r"(^|\.)encoder\.layer\.(\d+)\.", "${1}encoder.layers.$2.")
    };
    ($from:literal, $to:literal) => {
        [
            (
                concat!($from, r"attention\.self\."),
                concat!($to, "attention.self_attn."),
            ),
            (
                concat!($from, r"attention\.output\."),
                concat!($to, "attention.output."),
            ),
            (
                concat!($from, r"intermediate\."),
                concat!($to, "ffn.intermediate."),
            ),
            (concat!($from, r"output\."), concat!($to, "ffn.output.")),
            (r"\.LayerNorm\.", ".layer_norm."),
        ]
    };
}

const fn concat<const A: usize, const B: usize, const C: usize>(
    a: [(&'static str, &'static str); A],
    b: [(&'static str, &'static str); B],
) -> [(&'static str, &'static str); C] {
    assert!(A + B == C);
    let mut out = [("", ""); C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

const BERT_RENAMES: [(&str, &str); 6] = concat([(r"^bert\.", "")], encoder_renames!());

/// HF `BertModel` (and the `bert.` sub-module of the pretraining models).
pub const BERT: HfMapping = HfMapping {
    model: "BertModel",
    renames: &BERT_RENAMES,
    // A buffer of arange(max_positions), not a parameter.
    unused_by_design: &[r"(^|\.)embeddings\.position_ids$"],
};

const VISUAL_BERT_RENAMES: [(&str, &str); 6] = concat(
    [(
        r"(^|\.)embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.",
        "${1}embeddings.text.$2.",
    )],
    encoder_renames!(),
);

/// HF `VisualBertModel`.
pub const VISUAL_BERT: HfMapping = HfMapping {
    model: "VisualBertModel",
    renames: &VISUAL_BERT_RENAMES,
    unused_by_design: &[r"(^|\.)embeddings\.position_ids$"],
};

const VISUAL_BERT_PRETRAINING_RENAMES: [(&str, &str); 9] = concat(
    [
        (r"^cls\.predictions\.transform\.", "mlm."),
        (r"^cls\.predictions\.bias$", "mlm.bias"),
        (r"^cls\.seq_relationship\.", "sentence_image.classifier."),
    ],
    VISUAL_BERT_RENAMES,
);

/// HF `VisualBertForPreTraining`. The decoder is tied to the word embeddings, so a stored copy
/// (`cls.predictions.decoder.*`, written by some exporters) is unused by design.
pub const VISUAL_BERT_PRETRAINING: HfMapping = HfMapping {
    model: "VisualBertForPreTraining",
    renames: &VISUAL_BERT_PRETRAINING_RENAMES,
    unused_by_design: &[
        r"(^|\.)embeddings\.position_ids$",
        r"^cls\.predictions\.decoder\.(weight|bias)$",
    ],
};

const VILBERT_CO_ATTENTION_RENAMES: [(&str, &str); 14] = [
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.query2\.",
        "${1}encoder.c_layers.$2.text_to_image.attention.query.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.key1\.",
        "${1}encoder.c_layers.$2.text_to_image.attention.key.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.value1\.",
        "${1}encoder.c_layers.$2.text_to_image.attention.value.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biOutput\.dense2\.",
        "${1}encoder.c_layers.$2.text_to_image.output.dense.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biOutput\.LayerNorm2\.",
        "${1}encoder.c_layers.$2.text_to_image.output.layer_norm.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.query1\.",
        "${1}encoder.c_layers.$2.image_to_text.attention.query.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.key2\.",
        "${1}encoder.c_layers.$2.image_to_text.attention.key.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biattention\.value2\.",
        "${1}encoder.c_layers.$2.image_to_text.attention.value.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biOutput\.dense1\.",
        "${1}encoder.c_layers.$2.image_to_text.output.dense.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.biOutput\.LayerNorm1\.",
        "${1}encoder.c_layers.$2.image_to_text.output.layer_norm.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.v_intermediate\.",
        "${1}encoder.c_layers.$2.v_ffn.intermediate.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.v_output\.",
        "${1}encoder.c_layers.$2.v_ffn.output.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.t_intermediate\.",
        "${1}encoder.c_layers.$2.t_ffn.intermediate.",
    ),
    (
        r"(^|\.)encoder\.c_layer\.(\d+)\.t_output\.",
        "${1}encoder.c_layers.$2.t_ffn.output.",
    ),
];

const VILBERT_RENAMES: [(&str, &str); 24] = concat(
    concat::<14, 5, 19>(
        VILBERT_CO_ATTENTION_RENAMES,
        encoder_renames!(
            r"(^|\.)encoder\.v_layer\.(\d+)\.",
            "${1}encoder.v_layers.$2."
        ),
    ),
    encoder_renames!(),
);

/// ViLBERT reference `BertModel` (facebookresearch/vilbert-multi-task `vilbert.py`).
pub const VILBERT: HfMapping = HfMapping {
    model: "ViLBERTModel",
    renames: &VILBERT_RENAMES,
    // The reference creates q_dense1/q_dense2 in every co-attention block and never uses them.
    unused_by_design: &[r"(^|\.)encoder\.c_layer\.\d+\.biOutput\.q_dense[12]\.(weight|bias)$"],
};

const VILBERT_PRETRAINING_RENAMES: [(&str, &str); 29] = concat(
    [
        (r"^cls\.predictions\.transform\.", "mlm."),
        (r"^cls\.predictions\.bias$", "mlm.bias"),
        (r"^cls\.imagePredictions\.transform\.", "region_head."),
        (r"^cls\.imagePredictions\.decoder\.", "region_head.decoder."),
        (r"^cls\.bi_seq_relationship\.", "itm.classifier."),
    ],
    VILBERT_RENAMES,
);

/// ViLBERT reference `BertForMultiModalPreTraining`. Its MLM decoder is tied to the word
/// embeddings, so the stored copy `cls.predictions.decoder.weight` is unused by design.
pub const VILBERT_PRETRAINING: HfMapping = HfMapping {
    model: "ViLBERTForMultiModalPreTraining",
    renames: &VILBERT_PRETRAINING_RENAMES,
    unused_by_design: &[
        r"(^|\.)encoder\.c_layer\.\d+\.biOutput\.q_dense[12]\.(weight|bias)$",
        r"^cls\.predictions\.decoder\.weight$",
    ],
};

const LXMERT_RENAMES: [(&str, &str); 15] = concat(
    concat::<5, 5, 10>(
        [
            (
                r"(^|\.)encoder\.x_layers\.(\d+)\.visual_attention\.att\.",
                "${1}encoder.x_layers.$2.cross.attention.",
            ),
            (
                r"(^|\.)encoder\.x_layers\.(\d+)\.visual_attention\.output\.",
                "${1}encoder.x_layers.$2.cross.output.",
            ),
            (
                r"(^|\.)encoder\.x_layers\.(\d+)\.(lang|visn)_self_att\.self\.",
                "${1}encoder.x_layers.$2.${3}_self_att.self_attn.",
            ),
            (
                r"(^|\.)encoder\.x_layers\.(\d+)\.(lang|visn)_inter\.",
                "${1}encoder.x_layers.$2.${3}_ffn.intermediate.",
            ),
            (
                r"(^|\.)encoder\.x_layers\.(\d+)\.(lang|visn)_output\.",
                "${1}encoder.x_layers.$2.${3}_ffn.output.",
            ),
        ],
        encoder_renames!(
            r"(^|\.)encoder\.r_layers\.(\d+)\.",
            "${1}encoder.r_layers.$2."
        ),
    ),
    encoder_renames!(),
);

/// HF `LxmertModel`.
pub const LXMERT: HfMapping = HfMapping {
    model: "LxmertModel",
    renames: &LXMERT_RENAMES,
    unused_by_design: &[r"(^|\.)embeddings\.position_ids$"],
};

const LXMERT_PRETRAINING_RENAMES: [(&str, &str); 22] = concat(
    [
        (r"^cls\.predictions\.transform\.", "mlm."),
        (r"^cls\.predictions\.bias$", "mlm.bias"),
        (r"^cls\.seq_relationship\.", "matched.classifier."),
        (
            r"^obj_predict_head\.decoder_dict\.(obj|attr|feat)\.",
            "obj_predict_head.$1.",
        ),
        (r"^answer_head\.logit_fc\.0\.", "answer_head.dense."),
        (r"^answer_head\.logit_fc\.2\.", "answer_head.layer_norm."),
        (r"^answer_head\.logit_fc\.3\.", "answer_head.classifier."),
    ],
    LXMERT_RENAMES,
);

/// HF `LxmertForPreTraining`. The MLM decoder is tied to the word embeddings.
pub const LXMERT_PRETRAINING: HfMapping = HfMapping {
    model: "LxmertForPreTraining",
    renames: &LXMERT_PRETRAINING_RENAMES,
    unused_by_design: &[
        r"(^|\.)embeddings\.position_ids$",
        r"^cls\.predictions\.decoder\.(weight|bias)$",
    ],
};
