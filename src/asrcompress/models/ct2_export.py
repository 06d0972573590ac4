"""Our (compressed) Whisper -> a CTranslate2 directory that faster-whisper loads, and what CTranslate2 can hold.

The exporter reuses CTranslate2's own code: its Transformers ``WhisperLoader`` fills the
``ctranslate2.specs.whisper_spec.WhisperSpec`` from the loaded ``nn.Module`` (fused q/k/v, the FFN, the
layer norms, the vocabulary and config from the generation config), and its ``Converter.convert``
validates, quantises and writes ``model.bin`` / ``config.json`` / ``vocabulary.json``. What this module
adds: the spec is sized from the module (not from the config, which keeps the base head counts after
head pruning), and a check of every structure first.

What CTranslate2 4.x holds, found by reading ``whisper_spec`` / ``transformer_spec`` / ``attention_spec`` and by
exporting tiny models with each structure and comparing CTranslate2's outputs with ours
(``tests/test_ct2_export.py``):

* layers removed or merged: held. ``WhisperSpec`` takes the layer counts, and a merged layer is an
  ordinary layer (the generation config's alignment heads, remapped by ``compress.surgery``, come along).
  A stack with no layer left is not (CTranslate2 looks for ``encoder/layer_0``): refused.
* per-layer FFN widths: held. Each FFN's width is read from its weight shapes, layer by layer. A
  zero-width FFN is not (CTranslate2 refuses a variable with a 0 dimension: "Variable
  '.../ffn/linear_0/bias' has an invalid shape"); it is exported as one inert zero neuron (``fc1`` row,
  bias and ``fc2`` column zero: GELU(0) = 0, so the output is ``fc2``'s bias as ours), 2 d + 1 parameters.
* fewer heads, the same count in every layer of a stack (decoder: self- and cross-attention alike): held.
  The spec stores one ``num_heads`` per stack (``encoder/num_heads``, ``decoder/num_heads``); when heads x
  head_dim differs from d_model the attention's ``queries_scale`` is set to head_dim^-1/2 (CTranslate2
  would otherwise scale by (d_model / heads)^-1/2).
* per-layer head counts: not held. One ``num_heads`` per stack, and CTranslate2 splits every layer's
  projections into that many heads; a ``num_heads`` written per attention is ignored (tried: the outputs
  stay wrong); nor an attention with every head removed. Option ``pad_heads``: every attention of a stack
  is padded with zero heads (zero q/k/v rows and biases, zero ``out_proj`` columns: the padded heads'
  output is exactly zero) up to the stack's largest count (at least one); costs 4 x head_dim x d_model parameters per padded head, and their compute.
* a low-rank (factorised) token embedding: not held. The spec has one ``decoder/embeddings`` weight
  (vocab x d_model) and a ``decoder/projection`` of the same shape; there is no slot for the factors.
  Option ``expand_embedding``: the product A @ B is stored as the dense embedding (tied; CTranslate2 stores
  it once). It computes what ours computes, but costs vocab x d_model - rank x (vocab + d_model)
  parameters (Whisper base, rank 128: +19.9 M, +80 MB in float32) and the full vocab x d_model output
  projection per token.
* zeroed weights (unstructured sparsity): held as dense zeros: no smaller file and no faster kernel
  (CTranslate2 runs dense GEMMs; int8 stores a zero in a byte like any other value).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CT2ExportError", "ct2_capability", "check_export", "export_ct2", "export_model_ct2", "prepare_for_ct2",
           "QUANTIZATIONS"]

QUANTIZATIONS = ("float32", "int8")
EXPORT_RECORD = "export.json"


class CT2ExportError(ValueError):
    """A model that CTranslate2 cannot hold as asked; the message names the structure and the option."""


# ------------------------------------------------------------------------------------------ inspection
def _stacks(model: nn.Module) -> dict[str, nn.ModuleList]:
    return {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}


def _attentions(stack: str, layer: nn.Module) -> list[tuple[str, nn.Module]]:
    out = [("self", layer.self_attn)]
    if stack == "decoder":
        out.append(("cross", layer.encoder_attn))
    return out


def _heads(att: nn.Module) -> int:
    return int(att.q_proj.out_features // att.head_dim)


def _check_whisper(model: nn.Module) -> None:
    from transformers import WhisperForConditionalGeneration

    if not isinstance(model, WhisperForConditionalGeneration):
        raise CT2ExportError(f"only Whisper exports to CTranslate2's WhisperSpec, got {type(model).__name__}")


def ct2_capability(model: nn.Module) -> dict[str, Any]:
    """Every structure of a loaded Whisper and whether CTranslate2's ``WhisperSpec`` holds it.

    Returns ``{"holds_as_is": bool, "needs": [option names], "exportable": bool (with those options),
    "structures": [...]}``; each structure is
    ``{"structure", "found", "ct2": "held" | "held (padded)" | "not held" | "held as dense zeros",
    "reason", "option", "option_cost_params"}`` (``option`` = the export option that makes it exportable,
    or None; its cost in parameters beyond ours)."""
    from asrcompress.compress.surgery import LowRankEmbedding

    _check_whisper(model)
    cfg = model.config
    d = int(cfg.d_model)
    base = getattr(model, "_asrc_base_config", None) or cfg.to_dict()
    out: list[dict[str, Any]] = []

    def add(structure: str, found: str, ct2: str, reason: str, option: str | None = None, cost: int = 0,
            **extra: Any) -> None:
        out.append({"structure": structure, "found": found, "ct2": ct2, "reason": reason, "option": option,
                    "option_cost_params": int(cost), **extra})

    for stack, layers in _stacks(model).items():
        n, n0 = len(layers), int(base[f"{stack}_layers"])
        origins = [list(getattr(m, "asrc_origin", None) or [i]) for i, m in enumerate(layers)]
        merged = [o for o in origins if len(o) > 1]
        kept = {o for org in origins for o in org}
        removed = sorted(set(range(n0)) - kept) if n0 >= n else []
        found = f"{n} layers (base {n0})" + (f", merged {merged}" if merged else "") + (
            f", removed {removed}" if removed else "")
        if n == 0:
            add(f"{stack}.layers", found, "not held",
                f"CTranslate2 needs at least one {stack} layer (it reads {stack}/layer_0; tried)")
        else:
            add(f"{stack}.layers", found, "held",
                "WhisperSpec takes the layer count; a merged layer is an ordinary layer")
        widths = [int(m.fc1.out_features) for m in layers]
        zero = [i for i, w in enumerate(widths) if w == 0]
        if len(set(widths)) <= 1:
            found = f"uniform {widths[0] if widths else '-'}"
        else:
            found = f"per-layer {widths}"
        if zero:
            add(f"{stack}.ffn_width", found + f"; zero-width in layers {zero}", "held (padded)",
                "each FFN's width is read from its weights, but CTranslate2 refuses a 0-wide variable; "
                "a zero-width FFN is exported as one inert zero neuron", None, len(zero) * (2 * d + 1))
        else:
            add(f"{stack}.ffn_width", found, "held", "each FFN's width is read from its weights, layer by layer")
        counts = [(f"{i}.{kind}", _heads(att), int(att.head_dim)) for i, m in enumerate(layers)
                  for kind, att in _attentions(stack, m)]
        distinct = sorted({c for _, c, _ in counts})
        found = (f"uniform {distinct[0]}" if len(distinct) == 1 else
                 "per attention " + ", ".join(f"{k}:{c}" for k, c, _ in counts))
        if not counts:
            add(f"{stack}.heads", "no layers", "held", "no attention to hold")
        elif len(distinct) == 1 and distinct[0] > 0:
            inner = distinct[0] * counts[0][2]
            add(f"{stack}.heads", found, "held",
                "one num_heads per stack" + (f"; inner width {inner} != d_model {d}: queries_scale set to "
                                             "head_dim^-1/2" if inner != d else ""))
        else:
            top = max(max(distinct), 1)
            cost = sum((top - c) * 4 * hd * d for _, c, hd in counts)
            reason = (f"WhisperSpec has one num_heads for the whole {stack}"
                      + (" (self- and cross-attention share it)" if stack == "decoder" else "")
                      + "; CTranslate2 splits every layer's projections into that many heads and ignores a "
                        "per-attention num_heads (tried: outputs wrong)") if len(distinct) > 1 else (
                "every head removed: CTranslate2 has no head-less attention (0-wide projections are refused)")
            add(f"{stack}.heads", found, "not held", reason, "pad_heads", cost)
    emb = model.model.decoder.embed_tokens
    if isinstance(emb, LowRankEmbedding):
        vocab, r = emb.num_embeddings, emb.rank
        add("decoder.embedding", f"low-rank rank {r} (A {vocab}x{r}, B {r}x{d})", "not held",
            "WhisperSpec has one dense decoder/embeddings weight (vocab x d_model) and a projection of the "
            "same shape: no slot for factors; multiplied out it computes the same but is stored dense and "
            "the output projection costs vocab x d_model per token", "expand_embedding",
            vocab * d - r * (vocab + d))
    else:
        add("decoder.embedding", f"dense {tuple(emb.weight.shape)}", "held", "decoder/embeddings, tied projection")
    total = zeros = 0
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed" not in name:
            total += p.numel()
            zeros += int((p == 0).sum())
    frac = zeros / total if total else 0.0
    add("zeros", f"{100 * frac:.2f} % of the linear weights are zero", "held as dense zeros" if zeros else "held",
        "CTranslate2 stores and multiplies dense matrices: zeros cost the same bytes and time",
        zero_fraction=frac)
    needs = sorted({s["option"] for s in out if s["option"]})
    return {"holds_as_is": all(s["ct2"] != "not held" for s in out), "needs": needs,
            "exportable": all(s["option"] for s in out if s["ct2"] == "not held"), "structures": out}


# ------------------------------------------------------------------------------------------ preparation
def _pad_rows(lin: nn.Linear, extra: int) -> None:
    w = lin.weight.data
    lin.weight = nn.Parameter(torch.cat([w, w.new_zeros(extra, w.shape[1])]))
    if lin.bias is not None:
        lin.bias = nn.Parameter(torch.cat([lin.bias.data, lin.bias.data.new_zeros(extra)]))
    lin.out_features += extra


def _pad_cols(lin: nn.Linear, extra: int) -> None:
    w = lin.weight.data
    lin.weight = nn.Parameter(torch.cat([w, w.new_zeros(w.shape[0], extra)], dim=1))
    lin.in_features += extra


@torch.no_grad()
def prepare_for_ct2(model: nn.Module, *, pad_heads: bool = False, expand_embedding: bool = False) -> nn.Module:
    """A copy of ``model`` in shapes CTranslate2 holds (the original is not touched), computing what
    ``model`` computes: zero-width FFNs get one zero neuron; with ``pad_heads`` every attention of a stack
    is padded with zero heads to the stack's largest head count; with ``expand_embedding`` a low-rank
    embedding becomes the dense tied ``A @ B``. Raises :class:`CT2ExportError` naming each structure
    that needs an option not given."""
    from transformers.models.whisper.modeling_whisper import WhisperAttention

    from asrcompress.compress.surgery import LowRankEmbedding

    cap = ct2_capability(model)
    given = {"pad_heads": pad_heads, "expand_embedding": expand_embedding}
    missing = [s for s in cap["structures"] if s["ct2"] == "not held" and not given.get(s["option"] or "")]
    if missing:
        raise CT2ExportError("CTranslate2 cannot hold: " + "; ".join(
            f"{s['structure']} ({s['found']}): {s['reason']}; " + (
                f"export with {s['option']}=True to store it (+{s['option_cost_params'] / 1e6:.2f} M parameters)"
                if s["option"] else "no export option stores it") for s in missing))
    out = copy.deepcopy(model).float().eval()
    for stack, layers in _stacks(out).items():
        for layer in layers:
            if layer.fc1.out_features == 0:
                _pad_rows(layer.fc1, 1)
                _pad_cols(layer.fc2, 1)
        if pad_heads:
            atts = [att for m in layers for _, att in _attentions(stack, m)]
            top = max([_heads(a) for a in atts] + [1])
            for att in atts:
                extra = (top - _heads(att)) * att.head_dim
                if extra:
                    for name in ("q_proj", "k_proj", "v_proj"):
                        _pad_rows(getattr(att, name), extra)
                    _pad_cols(att.out_proj, extra)
                    if type(att) is not WhisperAttention:  # a head-less module (compress.surgery) computes again
                        att.__class__ = WhisperAttention
                    att.num_heads, att.embed_dim = top, top * att.head_dim
    emb = out.model.decoder.embed_tokens
    if isinstance(emb, LowRankEmbedding):
        dense = nn.Embedding(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx)
        dense.weight = nn.Parameter(emb.full_weight().detach().clone())
        out.model.decoder.embed_tokens = dense
        proj = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
        proj.weight = dense.weight
        out.proj_out = proj
        out.config.tie_word_embeddings = True
    return out


# ------------------------------------------------------------------------------------------ export
def _loader_class() -> type:
    from ctranslate2.converters.transformers import WhisperLoader
    from ctranslate2.specs import whisper_spec

    class ModuleWhisperLoader(WhisperLoader):
        """CTranslate2's Whisper loader, the spec sized from the module (layer and head counts)."""

        def get_model_spec(self, model: nn.Module) -> Any:
            heads = {}
            for stack, layers in _stacks(model).items():
                counts = {_heads(att) for m in layers for _, att in _attentions(stack, m)}
                counts = counts or {int(getattr(model.config, f"{stack}_attention_heads"))}  # no layers: unused
                if len(counts) != 1:
                    raise CT2ExportError(f"{stack}: head counts {sorted(counts)} differ (prepare_for_ct2 first)")
                heads[stack] = counts.pop()
            spec = whisper_spec.WhisperSpec(len(model.model.encoder.layers), heads["encoder"],
                                            len(model.model.decoder.layers), heads["decoder"])
            self.set_encoder(spec.encoder, model.model.encoder)
            self.set_decoder(spec.decoder, model.model.decoder)
            self.set_linear(spec.decoder.projection, model.proj_out)
            d = model.config.d_model
            for stack, sspec in (("encoder", spec.encoder), ("decoder", spec.decoder)):
                for ls, layer in zip(sspec.layer, _stacks(model)[stack], strict=True):
                    pairs = [(ls.self_attention, layer.self_attn)]
                    if stack == "decoder":
                        pairs.append((ls.attention, layer.encoder_attn))
                    for a_spec, att in pairs:
                        if _heads(att) * att.head_dim != d:
                            a_spec.queries_scale = np.float32(att.head_dim ** -0.5)
            return spec

        def set_config(self, config: Any, model: nn.Module, tokenizer: Any) -> None:
            super().set_config(config, model, tokenizer)
            heads = _heads(model.model.decoder.layers[0].encoder_attn)
            n = len(model.model.decoder.layers)
            pairs = [list(map(int, p)) for p in (config.alignment_heads or [])
                     if int(p[0]) < n and int(p[1]) < heads]
            config.alignment_heads = pairs or [[i, h] for i in range(n // 2, n) for h in range(heads)]

    return ModuleWhisperLoader


def export_model_ct2(model: nn.Module, processor: Any, out_dir: str | Path, quantization: str = "float32", *,
                     pad_heads: bool = False, expand_embedding: bool = False) -> dict[str, Any]:
    """Write a loaded Whisper + its ``WhisperProcessor`` to ``out_dir`` as a CTranslate2 model that
    ``faster_whisper.WhisperModel(out_dir)`` loads offline: ``model.bin``, ``config.json``,
    ``vocabulary.json`` (CTranslate2's converter), ``tokenizer.json``, ``preprocessor_config.json`` and
    ``export.json`` (the capability report, the options, parameter counts, bytes). Refuses
    (:class:`CT2ExportError`, naming the structure) what CTranslate2 cannot hold unless the option that
    stores it is given. Returns the record."""
    from ctranslate2.converters.converter import Converter

    if quantization not in QUANTIZATIONS:
        raise CT2ExportError(f"quantization {quantization!r}: expected one of {QUANTIZATIONS}")
    cap = ct2_capability(model)
    ready = prepare_for_ct2(model, pad_heads=pad_heads, expand_embedding=expand_embedding)
    loader = _loader_class()()
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ct2_export_") as tmp:
        processor.tokenizer.save_pretrained(tmp)
        processor.feature_extractor.to_json_file(str(Path(tmp) / "preprocessor_config.json"))
        if not (Path(tmp) / "tokenizer.json").is_file():
            raise CT2ExportError("the processor's tokenizer wrote no tokenizer.json (faster-whisper needs one)")

        class _Converter(Converter):
            def _load(self) -> Any:
                with torch.no_grad():
                    spec = loader(ready, processor.tokenizer)
                for name in ("tokenizer.json", "preprocessor_config.json"):
                    spec.register_file(str(Path(tmp) / name))
                return spec

        _Converter().convert(str(out_dir), quantization=quantization, force=True)
    params_ours = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    params_ct2 = sum(p.numel() for p in {id(p): p for p in ready.parameters()}.values())
    record = {"quantization": quantization, "pad_heads": pad_heads, "expand_embedding": expand_embedding,
              "params_ours": params_ours, "params_exported": params_ct2,
              "model_bin_bytes": (out_dir / "model.bin").stat().st_size, "capability": cap}
    (out_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def export_ct2(model_dir: str | Path, out_dir: str | Path, quantization: str = "float32", *,
               pad_heads: bool = False, expand_embedding: bool = False) -> dict[str, Any]:
    """Export a model directory (``save_compressed`` or plain ``save_pretrained`` + processor) to a
    faster-whisper directory; see :func:`export_model_ct2`. ``out_dir`` is replaced; on a refusal nothing
    is written."""
    from transformers import WhisperProcessor

    from asrcompress.compress.checkpoint import load_compressed

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_compressed(model_dir)
    _check_whisper(model)
    processor = WhisperProcessor.from_pretrained(str(model_dir))
    try:
        record = export_model_ct2(model, processor, out_dir, quantization, pad_heads=pad_heads,
                                  expand_embedding=expand_embedding)
    except CT2ExportError as err:
        raise CT2ExportError(f"{model_dir}: {err}") from None
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    record["source"] = str(model_dir)
    (out_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


@torch.inference_mode()
def check_export(model: nn.Module, processor: Any, ct2_dir: str | Path, audios: list[np.ndarray], language: str,
                 max_length: int = 64) -> dict[str, Any]:
    """The CTranslate2 runtime on ``ct2_dir`` fed our log-mel features of each audio (the same input), greedy
    from the ``language`` transcribe prompt, against ``model``: the largest encoder-output difference, the
    largest difference of every step's logits (ours teacher-forced on CTranslate2's tokens), and on how many
    audios our greedy choice equals CTranslate2's at every step. A float32 export of a model it holds
    gives differences at float rounding (~1e-5 of logits ~10) and every greedy step equal."""
    import ctranslate2

    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>",
                                        "<|notimestamps|>"])
    engine = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="default")
    enc_diff = logit_diff = 0.0
    equal = 0
    for audio in audios:
        feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        sv = ctranslate2.StorageView.from_array(feats.numpy())
        res = engine.generate(sv, [prompt], beam_size=1, max_length=max_length, suppress_blank=False,
                              suppress_tokens=[], return_logits_vocab=True)[0]
        tokens = res.sequences_ids[0]
        enc = model.model.encoder(feats.to(model.dtype)).last_hidden_state
        # ours teacher-forced on every CTranslate2 token: one logits row per CTranslate2 step (its end-of-text
        # step included when it returns one; the end token itself is not in sequences_ids)
        ids = torch.tensor([prompt + tokens])
        ours = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits[0, len(prompt) - 1:].float().numpy()
        theirs = np.stack([np.asarray(x) for x in res.logits[0]])[:, : ours.shape[1]] if res.logits[0] else ours[:0]
        enc_diff = max(enc_diff, float(np.abs(np.asarray(engine.encode(sv, to_cpu=True)) - enc.float().numpy()).max()))
        n = min(len(theirs), len(ours))
        if n:
            logit_diff = max(logit_diff, float(np.abs(theirs[:n] - ours[:n]).max()))
        equal += ours.argmax(-1)[: len(tokens)].tolist() == tokens
    return {"utterances": len(audios), "greedy_equal": equal, "max_encoder_diff": enc_diff,
            "max_logit_diff": logit_diff, "language": language}
