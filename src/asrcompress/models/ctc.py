"""CTC models (wav2vec 2.0, HuBERT): character vocabulary, processor, models, greedy decoding.

Smoke: a character vocabulary is read off the corpus text (``<pad>`` = 0 is also the CTC blank,
``<unk>`` = 1, ``|`` = 2 the word delimiter, then the characters in sorted order), wrapped in a
``Wav2Vec2CTCTokenizer`` + ``Wav2Vec2FeatureExtractor(return_attention_mask=True)`` as a
``Wav2Vec2Processor``; the model is built from the dimensions in params with the fast
four-layer conv front-end of shared/OFFLINE_NOTES.md (stride 320 = 50 frames per second).

Paper: :func:`build_model` with ``source`` = a hub id (``facebook/wav2vec2-base``,
``facebook/hubert-large-ll60k``) loads the pretrained encoder and puts a new CTC head sized to
the vocabulary on it; the rest of the code path is the same. Models and processors are saved with
``save_pretrained`` and reload with :func:`load_pretrained`.

Decoding is greedy CTC: arg-max per frame over the valid frames, repeats collapsed, blanks
removed (:func:`ctc_collapse`), ids turned into text by the tokenizer with ``group_tokens=False``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

__all__ = [
    "PAD",
    "UNK",
    "WORD_DELIMITER",
    "KINDS",
    "build_vocab",
    "build_processor",
    "build_model",
    "load_pretrained",
    "save_pretrained",
    "label_ids",
    "ctc_collapse",
    "greedy_ids",
    "ctc_decode",
    "transcribe_ctc",
]

PAD, UNK, WORD_DELIMITER = "<pad>", "<unk>", "|"
KINDS: dict[str, tuple[type, type]] = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2ForCTC),
    "hubert": (HubertConfig, HubertForCTC),
}
# the fast conv front-end (shared/OFFLINE_NOTES.md): 0.46 s per step at batch 16 on 2 cores
FAST_FRONTEND: dict[str, Any] = {
    "feat_extract_norm": "group",
    "conv_dim": (32, 32, 32, 32),
    "conv_stride": (5, 4, 4, 4),
    "conv_kernel": (10, 8, 4, 4),
}


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Character vocabulary: ``<pad>`` (CTC blank) 0, ``<unk>`` 1, ``|`` 2, then every character of
    ``texts`` except the space (which the tokenizer maps to ``|``), sorted."""
    chars = sorted({c for t in texts for c in t} - {" "})
    for reserved in (PAD, UNK, WORD_DELIMITER):
        if reserved in chars:
            raise ValueError(f"corpus text contains the reserved token {reserved!r}")
    return {PAD: 0, UNK: 1, WORD_DELIMITER: 2, **{c: i + 3 for i, c in enumerate(chars)}}


def build_processor(vocab: Mapping[str, int], sampling_rate: int = 16000) -> Wav2Vec2Processor:
    """A ``Wav2Vec2Processor`` over ``vocab``: CTC tokenizer (no BOS/EOS, ``|`` between words) and a
    feature extractor that normalises each utterance and returns attention masks."""
    if vocab.get(PAD) != 0:
        raise ValueError(f"vocab: {PAD!r} must have id 0 (it is the CTC blank)")
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its vocabulary from a file
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(dict(vocab), ensure_ascii=False))
        tokenizer = Wav2Vec2CTCTokenizer(str(path), bos_token=None, eos_token=None, unk_token=UNK,
                                         pad_token=PAD, word_delimiter_token=WORD_DELIMITER)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sampling_rate, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def _config_kwargs(dims: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    drop = float(dims.get("dropout", 0.0))
    return {
        **FAST_FRONTEND,
        "feat_extract_norm": str(dims.get("conv_norm", FAST_FRONTEND["feat_extract_norm"])),
        "vocab_size": vocab_size,
        "hidden_size": int(dims["hidden_size"]),
        "num_hidden_layers": int(dims["num_hidden_layers"]),
        "num_attention_heads": int(dims["num_attention_heads"]),
        "intermediate_size": int(dims["intermediate_size"]),
        "num_conv_pos_embeddings": int(dims.get("num_conv_pos_embeddings", 32)),
        "num_conv_pos_embedding_groups": int(dims.get("num_conv_pos_embedding_groups", 16)),
        "hidden_dropout": drop, "attention_dropout": drop, "activation_dropout": drop,
        "feat_proj_dropout": drop, "final_dropout": drop, "layerdrop": 0.0,
        "apply_spec_augment": bool(dims.get("spec_augment", True)),
        "do_stable_layer_norm": bool(dims.get("stable_layer_norm", False)),
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,
        "pad_token_id": 0,
    }


def build_model(kind: str, source: str, processor: Wav2Vec2Processor, dims: Mapping[str, Any] | None = None,
                attn_implementation: str = "sdpa") -> Wav2Vec2ForCTC | HubertForCTC:
    """A CTC model of ``kind`` (``"wav2vec2"`` | ``"hubert"``) with an output layer sized to the
    processor's vocabulary.

    ``source == "scratch"``: randomly initialised from ``dims`` (``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, optional
    ``num_conv_pos_embeddings`` (32), ``num_conv_pos_embedding_groups`` (16), ``dropout`` (0),
    ``spec_augment`` (true), ``stable_layer_norm`` (false: post-LN as wav2vec2-base; true: pre-LN as
    the large models), ``conv_norm`` ("group" | "layer")) with the fast conv front-end. Otherwise ``source`` is a hub id or path
    of a pretrained encoder; its CTC head is created anew (``vocab_size`` differs from any head it
    may have) and the conv feature encoder is frozen, as usual for CTC fine-tuning.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown CTC model kind {kind!r}; known: {sorted(KINDS)}")
    config_cls, model_cls = KINDS[kind]
    vocab_size = len(processor.tokenizer)
    if source == "scratch":
        if dims is None:
            raise ValueError("build_model: source 'scratch' needs dims")
        config = config_cls(**_config_kwargs(dims, vocab_size))
        config._attn_implementation = attn_implementation
        return model_cls(config)
    model = model_cls.from_pretrained(  # real code path of the paper profile (needs the hub)
        source, vocab_size=vocab_size, pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        ignore_mismatched_sizes=True, attn_implementation=attn_implementation)
    model.freeze_feature_encoder()
    return model


def save_pretrained(model: torch.nn.Module, processor: Wav2Vec2Processor, out_dir: str | Path) -> Path:
    """``save_pretrained`` of model and processor into one directory."""
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_pretrained(path: str | Path, kind: str | None = None, attn_implementation: str = "sdpa"
                    ) -> tuple[Wav2Vec2ForCTC | HubertForCTC, Wav2Vec2Processor]:
    """Model + processor from a :func:`save_pretrained` directory; ``kind`` defaults to the saved
    architecture."""
    from transformers import AutoConfig

    path = Path(path)
    if kind is None:
        arch = (AutoConfig.from_pretrained(str(path)).architectures or [""])[0]
        kind = {"Wav2Vec2ForCTC": "wav2vec2", "HubertForCTC": "hubert"}.get(arch)
        if kind is None:
            raise ValueError(f"{path}: architecture {arch!r} is not a CTC model kind ({sorted(KINDS)})")
    model = KINDS[kind][1].from_pretrained(str(path), attn_implementation=attn_implementation)
    processor = Wav2Vec2Processor.from_pretrained(str(path))
    return model.eval(), processor


def label_ids(tokenizer: Wav2Vec2CTCTokenizer, text: str) -> list[int]:
    """CTC targets of ``text`` (spaces become ``|``, unknown characters ``<unk>``)."""
    return tokenizer(text).input_ids


def ctc_collapse(ids: Sequence[int], blank: int = 0) -> list[int]:
    """Greedy CTC post-processing of one frame-wise id sequence: merge runs of the same id, then
    drop blanks (``a a - a b b`` -> ``a a b``)."""
    out: list[int] = []
    prev = None
    for i in ids:
        i = int(i)
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def greedy_ids(logits: torch.Tensor, lengths: Sequence[int] | torch.Tensor,
               blank: int = 0) -> list[list[int]]:
    """Collapsed arg-max ids of a batch of ``(batch, frames, vocab)`` logits; ``lengths`` = valid
    frames per row."""
    best = logits.argmax(dim=-1).tolist()
    return [ctc_collapse(row[:int(n)], blank) for row, n in zip(best, lengths, strict=True)]


@torch.inference_mode()
def ctc_decode(model: torch.nn.Module, processor: Wav2Vec2Processor, rows: Sequence[dict[str, Any]],
               batch_size: int = 32) -> tuple[list[str], list[int]]:
    """Greedy CTC transcription of ``rows`` (common schema, 16 kHz audio): (hypotheses, number of
    emitted labels per row: characters and word delimiters after collapsing), in row order.

    Every row's audio is checked first (1-D, non-empty, finite; :class:`AudioError` naming the
    row's ``id``). Rows are batched in order of length (less padding) with attention masks; the
    valid frames of each row come from the model's conv length formula."""
    from asrcompress.data.audio import check_row_audio

    arrays = [check_row_audio(r["audio"]["array"], str(r.get("id", f"row {i}"))) for i, r in enumerate(rows)]
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: arrays[i].size)
    hyps: dict[int, str] = {}
    lengths: dict[int, int] = {}
    tok = processor.tokenizer
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        inputs = processor.feature_extractor([arrays[i] for i in idx], sampling_rate=16000, padding=True,
                                             return_tensors="pt", return_attention_mask=True)
        logits = model(inputs.input_values.to(device), attention_mask=inputs.attention_mask.to(device)).logits
        frames = model._get_feat_extract_output_lengths(inputs.attention_mask.sum(-1))
        best = greedy_ids(logits.cpu(), frames.tolist(), blank=tok.pad_token_id)
        for i, ids in zip(idx, best, strict=True):
            hyps[i] = tok.decode(ids, group_tokens=False).strip()
            lengths[i] = len(ids)
    return [hyps[i] for i in range(len(rows))], [lengths[i] for i in range(len(rows))]


def transcribe_ctc(model: torch.nn.Module, processor: Wav2Vec2Processor, rows: Sequence[dict[str, Any]],
                   batch_size: int = 32) -> list[str]:
    """The hypotheses of :func:`ctc_decode`, in row order."""
    return ctc_decode(model, processor, rows, batch_size)[0]
