#!/usr/bin/env python3
"""PyTorch + HF transformers side of `cargo xtask bench`: the same work as tuwen's
`crates/tuwen-train/tests/bench_compare.rs`, on the batches and configurations it exported.

Each work directory (`<dir>/<work>/`, written by the tuwen side) holds `meta.json` (the work, the
model's configuration, the optimiser, the warm-up and timed iteration counts tuwen used, and the
batch's token ids, masks, MLM positions and labels, ITM labels) and the region features and box
encodings as little-endian f32 arrays. For each work this script builds the model with HF
transformers' own modules and repeats tuwen's work:

* kind "step" — one whole optimiser step in train mode: `VisualBertForPreTraining`'s encoder,
  its MLM head on the masked positions only (as tuwen's gathered MLM loss) with the decoder tied
  to the word embeddings, its sentence-image head for ITM, cross-entropy losses summed with
  the configured weights, backward, `clip_grad_norm_` (global norm), `torch.optim.AdamW` with
  HF's decay groups (no decay on biases and LayerNorm weights), the loss values read back as
  Python floats (tuwen reads its losses and the gradient norm every step); kind "step-bf16"
  the same under `torch.autocast("cpu", torch.bfloat16)` (tuwen's side trains with `[run]
  precision = "bf16"`);
* kind "forward" — `VisualBertModel` (with its pooler) in eval mode under
  `torch.inference_mode()`; kind "forward-bf16" the same under
  `torch.autocast("cpu", torch.bfloat16)` (tuwen's side runs its linear layers in bf16);
* kind "answer" — `tuwen vqa` for one question: `VisualBertModel` and a VQA answer head
  (hidden -> 2 hidden -> GELU -> LayerNorm -> answers) in eval mode under
  `torch.inference_mode()`, the sigmoid scores read back; "answer-bf16" under autocast;
* kind "extract" — `tuwen extract-regions`'s per-image work with torchvision: resize, the
  `mobilenet_v2` feature map (the same weights file), `roi_align` of tuwen's proposals, the
  classifier, softmax, `nms`, the kept regions;
* with `--bf16`, every step once more under `torch.autocast("cpu", torch.bfloat16)` (f32
  weights and optimiser), printed with `"variant": "bf16 autocast"`. Only meaningful on a CPU
  whose PyTorch build has bf16 kernels (AVX512-BF16 / AMX): on an AVX2-only CPU bf16 matrix
  products take a slow fallback (0.8 GFLOP/s against 64 in f32 on the development machine).

tuwen's VisualBERT adds a 5-d box encoding (`Linear(5, hidden)`) to the projected region
features; here the same linear layer is added to HF's `visual_projection`, so the models have
the same parameters (both sides print their count).

Prints one JSON line per work: {"side": "pytorch", "work", "ms" (median of the timed
iterations after the warm-up), "min_ms", "max_ms", "iters", "warmup", "threads", "params", ...}.

    python xtask/bench/torch_bench.py --dir target/bench --threads 2 [--works a,b] [--bf16]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, type=Path, help="directory of the exported works")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--works", default="", help="comma-separated work names (default: all)")
    p.add_argument("--bf16", action="store_true", help="also every step under bf16 autocast")
    return p.parse_args()


ARGS = parse_args()
# Before torch starts its pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import VisualBertConfig, VisualBertForPreTraining, VisualBertModel  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)
transformers.logging.set_verbosity_error()


class LocatedProjection(nn.Module):
    """HF's `visual_projection` plus tuwen's box encoding: `proj(features) + loc(boxes)`."""

    def __init__(self, proj: nn.Linear, location_dim: int):
        super().__init__()
        self.proj = proj
        self.loc = nn.Linear(location_dim, proj.out_features)
        self.boxes = None

    def forward(self, features):
        return self.proj(features) + self.loc(self.boxes)


def hf_config(m):
    return VisualBertConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["hidden_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        intermediate_size=m["intermediate_size"],
        hidden_act=m["hidden_act"],
        hidden_dropout_prob=m["hidden_dropout_prob"],
        attention_probs_dropout_prob=m["attention_probs_dropout_prob"],
        max_position_embeddings=m["max_position_embeddings"],
        type_vocab_size=m["type_vocab_size"],
        layer_norm_eps=m["layer_norm_eps"],
        visual_embedding_dim=m["visual_embedding_dim"],
    )


def with_location(encoder: VisualBertModel, location_dim: int):
    if location_dim == 0:
        return None
    emb = encoder.embeddings
    emb.visual_projection = LocatedProjection(emb.visual_projection, location_dim)
    return emb.visual_projection


def load_batch(work_dir: Path, meta):
    b = meta["batch"]
    rows, t, r, d = b["rows"], b["text_len"], b["regions"], b["feature_dim"]

    def f32(name, shape):
        data = np.fromfile(work_dir / name, dtype="<f4")
        return torch.from_numpy(data.copy()).reshape(shape)

    def ints(key, shape):
        return torch.tensor(b[key], dtype=torch.long).reshape(shape)

    return {
        "input_ids": ints("input_ids", (rows, t)),
        "attention_mask": ints("attention", (rows, t)),
        "visual_embeds": f32("features.f32", (rows, r, d)),
        "boxes": f32("locations.f32", (rows, r, 5)),
        "visual_attention_mask": ints("region_mask", (rows, r)),
        "mlm_positions": torch.tensor(b["mlm_positions"], dtype=torch.long),
        "mlm_labels": torch.tensor(b["mlm_labels"], dtype=torch.long),
        "itm_labels": torch.tensor([1 if m else 0 for m in b["itm_mismatch"]], dtype=torch.long),
    }


def params(model):
    # BatchNorm's running statistics count too: Burn keeps them as (untrained) parameters.
    stats = (b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + sum(stats)


def step_work(meta, batch, autocast=None):
    m = meta["model"]
    model = VisualBertForPreTraining(hf_config(m))
    located = with_location(model.visual_bert, m["location_dim"])
    if located is not None:
        located.boxes = batch["boxes"]
    assert (
        model.cls.predictions.decoder.weight is model.visual_bert.embeddings.word_embeddings.weight
    ), "the MLM decoder is tied to the word embeddings"
    model.train()
    o = meta["optim"]
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    named = list(model.named_parameters())
    groups = [
        {
            "params": [p for n, p in named if not any(k in n for k in no_decay)],
            "weight_decay": o["weight_decay"],
        },
        {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(
        groups, lr=o["learning_rate"], betas=(o["beta1"], o["beta2"]), eps=o["epsilon"]
    )
    obj = meta["objectives"]
    t = meta["batch"]["text_len"]
    h = m["hidden_size"]
    max_norm = o["max_grad_norm"]

    def losses():
        out = model.visual_bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_embeds=batch["visual_embeds"],
            visual_attention_mask=batch["visual_attention_mask"],
        )
        loss = out.last_hidden_state.new_zeros((), dtype=torch.float32)
        values = []
        if obj["mlm"] and len(batch["mlm_positions"]) > 0:
            text = out.last_hidden_state[:, :t].reshape(-1, h)
            logits = model.cls.predictions(text.index_select(0, batch["mlm_positions"]))
            mlm = F.cross_entropy(logits, batch["mlm_labels"])
            loss = loss + obj["mlm_weight"] * mlm
            values.append(mlm)
        if obj["itm"]:
            itm = F.cross_entropy(
                model.cls.seq_relationship(out.pooler_output), batch["itm_labels"]
            )
            loss = loss + obj["itm_weight"] * itm
            values.append(itm)
        return loss, values

    def run():
        if autocast is None:
            loss, values = losses()
        else:
            # Mixed precision as PyTorch users train: f32 weights and optimiser, matrix work in
            # `autocast` (bf16 on CPU), the losses in f32 (autocast's policy for cross-entropy).
            with torch.autocast("cpu", dtype=autocast):
                loss, values = losses()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
            )
        optim.step()
        [v.item() for v in values]
        norm.item()
        return loss.item()

    return model, run


def inference_model(meta, batch):
    """`VisualBertModel` (with its pooler) in eval mode, tuwen's box encoding attached."""
    m = meta["model"]
    model = VisualBertModel(hf_config(m), add_pooling_layer=True)
    located = with_location(model, m["location_dim"])
    if located is not None:
        located.boxes = batch["boxes"]
    model.eval()
    return model


def inference(model, batch, autocast, read):
    """`read` of the model's output on `batch` under `torch.inference_mode()` (and bf16
    autocast when `autocast` is given)."""
    with torch.inference_mode(), torch.autocast(
        "cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None
    ):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_embeds=batch["visual_embeds"],
            visual_attention_mask=batch["visual_attention_mask"],
        )
        return read(out)


def forward_work(meta, batch, autocast=None):
    model = inference_model(meta, batch)

    def run():
        # Read back as f32, as tuwen's side reads its f32 hidden states.
        hidden = inference(model, batch, autocast, lambda out: out.last_hidden_state.float())
        return float(hidden[0, 0, 0])

    return model, run


def answer_work(meta, batch, autocast=None):
    """`tuwen vqa` for one question: VisualBertModel's pooled output through the VQA answer head
    (LXMERT's / tuwen's `AnswerHead`: hidden -> 2 hidden -> GELU -> LayerNorm -> answers), the
    sigmoid scores read back."""
    model = inference_model(meta, batch)
    h = meta["model"]["hidden_size"]
    head = torch.nn.Sequential(
        torch.nn.Linear(h, 2 * h),
        torch.nn.GELU(),
        torch.nn.LayerNorm(2 * h, eps=1e-12),
        torch.nn.Linear(2 * h, meta["answers"]),
    ).eval()

    def run():
        scores = inference(
            model, batch, autocast, lambda out: torch.sigmoid(head(out.pooler_output)).float()
        )
        return float(scores[0, 0])

    return torch.nn.ModuleList([model, head]), run


def extract_work(meta, _batch):
    """tuwen's `RegionExtractor::extract` on each photo: resize, MobileNetV2 features,
    RoIAlign of tuwen's proposals (exported), classifier, softmax, NMS, the kept regions."""
    import torchvision
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision.ops import nms, roi_align

    c = meta["config"]
    model = torchvision.models.mobilenet_v2(num_classes=1000)
    model.load_state_dict(load_file(meta["weights"]))
    model.eval()
    mean = torch.tensor(c["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(c["std"]).reshape(1, 3, 1, 1)
    images = []
    for im in meta["images"]:
        rgb = np.asarray(Image.open(im["file"]).convert("RGB"))
        pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
        (w, h), (rw, rh) = im["size"], im["resized"]
        boxes = torch.tensor(im["proposals"], dtype=torch.float32)
        scale = torch.tensor([rw / w, rh / h, rw / w, rh / h])
        rows = torch.cat([torch.zeros(len(boxes), 1), boxes * scale], dim=1)
        images.append((pixels, (rh, rw), boxes, rows))

    def run():
        kept = 0
        with torch.inference_mode():
            for pixels, size, boxes, rows in images:
                x = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
                fmap = model.features((x - mean) / std)
                pooled = roi_align(
                    fmap,
                    rows,
                    output_size=tuple(c["pool_size"]),
                    spatial_scale=1.0 / 32,
                    sampling_ratio=c["sampling_ratio"],
                    aligned=True,
                )
                vectors = pooled.mean((2, 3))
                probs = model.classifier(vectors).softmax(1)
                scores = probs.max(1).values
                keep = nms(boxes, scores, c["nms_iou"])[: c["max_regions"]]
                kept += len(vectors[keep])
        return float(kept)

    return model, run


def measure(meta, model, run, variant=None):
    warmup, iters = max(1, meta["warmup"]), max(1, meta["iters"])
    first = run()
    for _ in range(warmup - 1):
        run()
    ms = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        ms.append((time.perf_counter() - start) * 1e3)
    line = {
        "side": "pytorch",
        "work": meta["work"],
        "what": meta["what"],
        "ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "warmup": warmup,
        "iters": iters,
        "threads": torch.get_num_threads(),
        "params": params(model),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
    }
    if meta["kind"] in ("step", "step-bf16"):
        line["first_loss"] = first
    if variant is not None:
        line["variant"] = variant
    print(json.dumps(line), flush=True)


def main():
    wanted = [w for w in ARGS.works.split(",") if w]
    dirs = [ARGS.dir / w for w in wanted] if wanted else sorted(
        p.parent for p in ARGS.dir.glob("*/meta.json")
    )
    if not dirs:
        sys.exit(f"no exported works in {ARGS.dir} (run tuwen's side first)")
    torch.manual_seed(0)
    for work_dir in dirs:
        meta = json.loads((work_dir / "meta.json").read_text())
        batch = None if meta["kind"] == "extract" else load_batch(work_dir, meta)
        build = {
            "step": step_work,
            # tuwen's training step with `[run] precision = "bf16"`: the reference under autocast.
            "step-bf16": lambda m, b: step_work(m, b, autocast=torch.bfloat16),
            "forward": forward_work,
            # tuwen's linear layers in bf16: the reference under bf16 autocast.
            "forward-bf16": lambda m, b: forward_work(m, b, autocast=torch.bfloat16),
            "answer": answer_work,
            "answer-bf16": lambda m, b: answer_work(m, b, autocast=torch.bfloat16),
            "extract": extract_work,
        }[meta["kind"]]
        model, run = build(meta, batch)
        measure(meta, model, run)
        del model, run
        if ARGS.bf16 and meta["kind"] == "step":
            # A PyTorch-only variant, compared with tuwen's f32 figure.
            model, run = step_work(meta, batch, autocast=torch.bfloat16)
            measure(meta, model, run, "bf16 autocast")
            del model, run


if __name__ == "__main__":
    main()
