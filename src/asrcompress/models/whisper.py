"""Whisper models, tokenizers and processors: built offline from a config (smoke) or loaded by hub id (paper).

Smoke: a byte-level BPE is trained on the corpus text with ``tokenizers``, wrapped in a
``WhisperTokenizer`` carrying Whisper's special tokens in Whisper's order (so language and task
ids are where ``set_prefix_tokens`` and ``generate(language=..., task=...)`` expect them), paired
with a ``WhisperFeatureExtractor`` whose window matches ``max_source_positions``, and a
``WhisperForConditionalGeneration`` built from the dimensions in params. Everything is saved
with ``save_pretrained`` and reloads with ``from_pretrained``.

Paper: the same functions load ``openai/whisper-small`` etc. by hub id; no code path is
smoke-only past construction.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
TASK_TOKENS = ["<|translate|>", "<|transcribe|>"]
OTHER_SPECIALS = ["<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def special_tokens() -> list[str]:
    """Whisper's special tokens in Whisper's order: SOT, all 100 languages, tasks, the rest."""
    return [SOT] + [f"<|{code}|>" for code in LANGUAGES] + TASK_TOKENS + OTHER_SPECIALS


def train_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE (the GPT-2 / Whisper scheme) on ``texts``; returns (vocab, merges)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise ValueError(f"tokenizer.vocab_size={vocab_size}: byte-level BPE needs >= 300 (256 bytes + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


def build_tokenizer(vocab: Mapping[str, int], merges: list[tuple[str, str]]) -> WhisperTokenizer:
    """A WhisperTokenizer over a locally trained BPE with Whisper's special tokens appended."""
    tok = WhisperTokenizer(vocab=dict(vocab), merges=list(merges), unk_token=EOT, bos_token=EOT,
                           eos_token=EOT, pad_token=EOT)
    tok.add_special_tokens({"additional_special_tokens": special_tokens()})
    return tok


def build_feature_extractor(chunk_length_s: int, num_mel_bins: int = 80) -> WhisperFeatureExtractor:
    """Log-mel front-end with a ``chunk_length_s`` window (100 frames per second)."""
    return WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length_s)


def generation_config_for(tokenizer: WhisperTokenizer, max_length: int) -> GenerationConfig:
    """A generation config that supports ``generate(features, language=..., task="transcribe")``.

    Built directly (not via ``from_model_config``, whose result drops the language fields on reload).
    """
    ids = tokenizer.convert_tokens_to_ids
    eot = ids(EOT)
    return GenerationConfig(
        decoder_start_token_id=ids(SOT), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES},
        task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), is_multilingual=True,
        begin_suppress_tokens=[eot], suppress_tokens=[], max_length=max_length,
        return_timestamps=False,
    )


def build_model(dims: Mapping[str, Any], tokenizer: WhisperTokenizer, chunk_length_s: int,
                attn_implementation: str = "sdpa") -> WhisperForConditionalGeneration:
    """A randomly initialised Whisper with the dimensions in ``dims`` (params ``model.whisper``)."""
    ids = tokenizer.convert_tokens_to_ids
    eot = ids(EOT)
    frames = 100 * chunk_length_s
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=int(dims.get("num_mel_bins", 80)),
        d_model=int(dims["d_model"]), encoder_layers=int(dims["encoder_layers"]),
        decoder_layers=int(dims["decoder_layers"]), encoder_attention_heads=int(dims["attention_heads"]),
        decoder_attention_heads=int(dims["attention_heads"]), encoder_ffn_dim=int(dims["ffn_dim"]),
        decoder_ffn_dim=int(dims["ffn_dim"]), max_source_positions=frames // 2,
        max_target_positions=int(dims["max_target_positions"]), dropout=float(dims.get("dropout", 0.0)),
        decoder_start_token_id=ids(SOT), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        suppress_tokens=[], begin_suppress_tokens=[eot], tie_word_embeddings=True,
    )
    config._attn_implementation = attn_implementation
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation_config_for(tokenizer, max_length=int(dims["max_target_positions"]))
    return model


def check_window(processor: WhisperProcessor, model: WhisperForConditionalGeneration) -> None:
    """Raise if the feature extractor's window and the encoder's positions disagree."""
    frames = processor.feature_extractor.nb_max_frames
    if frames != 2 * model.config.max_source_positions:
        raise ValueError(f"feature extractor gives {frames} frames but the model expects "
                         f"2 x max_source_positions = {2 * model.config.max_source_positions}")


@contextmanager
def encoder_window(model: WhisperForConditionalGeneration, processor: WhisperProcessor,
                   seconds: int | None) -> Iterator[WhisperProcessor]:
    """Run the body with the encoder window cut to ``seconds`` (``None``: unchanged), then restore it.

    Whisper's encoder positions are a fixed sinusoid table (``requires_grad`` off, never trained), so
    cutting it to the first ``50 * seconds`` rows and putting the saved table back afterwards is exact:
    a model fine-tuned inside the block is saved with its original window. Yields a processor whose
    feature extractor pads to the cut window (``check_window`` holds inside the block). The cost of
    the cut window is that the encoder never sees the padding of a 30 s window while training; a
    control trained the same way measures that (README, the real track's papers).
    """
    encoder = model.get_encoder()
    full = encoder.embed_positions
    frames = 100 * int(seconds) if seconds is not None else 2 * model.config.max_source_positions
    if frames // 2 > full.num_embeddings:
        raise ValueError(f"encoder window {seconds} s is longer than the model's "
                         f"{full.num_embeddings * 2 // 100} s")
    if frames // 2 == full.num_embeddings:
        yield processor
        return
    cut = torch.nn.Embedding(frames // 2, full.embedding_dim, device=full.weight.device, dtype=full.weight.dtype)
    cut.weight.data.copy_(full.weight.data[: frames // 2])
    cut.requires_grad_(False)
    old_positions = model.config.max_source_positions
    windowed = copy.deepcopy(processor)
    windowed.feature_extractor = build_feature_extractor(int(seconds), processor.feature_extractor.feature_size)
    encoder.embed_positions, encoder.max_source_positions = cut, frames // 2
    model.config.max_source_positions = frames // 2
    try:
        check_window(windowed, model)
        yield windowed
    finally:
        encoder.embed_positions, encoder.max_source_positions = full, old_positions
        model.config.max_source_positions = old_positions
        # a surgery inside the block snapshots the config as the model's base (compress/surgery.py): give that
        # snapshot the restored window too, or the saved structure record would not match the saved positions
        from asrcompress.compress.surgery import _BASE_CONFIG

        base = getattr(model, _BASE_CONFIG, None)
        if isinstance(base, dict) and base.get("max_source_positions") == frames // 2:
            base["max_source_positions"] = old_positions


def check_train_window(section: Mapping[str, Any], name: str, model: WhisperForConditionalGeneration) -> int | None:
    """``<name>.train_window_s`` of a params section: the encoder window (whole seconds) to train in
    (:func:`encoder_window`), or ``None`` (absent or null: the model's own window). Raises
    :class:`~asrcompress.config.ParamError` naming the key unless it is an int in [1, the model's window]."""
    from asrcompress.config import ParamError

    seconds = section.get("train_window_s")
    if seconds is None:
        return None
    full = 2 * model.config.max_source_positions // 100
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= full:
        raise ParamError(f"params.yaml: {name}.train_window_s: must be an integer number of seconds in "
                         f"[1, {full}] (the model's window) or null, got {seconds!r}")
    return seconds


def rows_in_window(rows: list[dict[str, Any]], seconds: int | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The corpus rows whose audio fits an encoder window of ``seconds`` (``None``: all rows), and the ids
    of those that do not. Training in a cut window (:func:`encoder_window`) drops the longer utterances
    rather than truncating them (a clipped clip no longer matches its transcript); callers log and record
    the dropped count."""
    if seconds is None:
        return list(rows), []
    kept, dropped = [], []
    for row in rows:
        audio = row["audio"]
        fits = len(audio["array"]) <= int(seconds) * int(audio["sampling_rate"])
        (kept if fits else dropped).append(row if fits else str(row["id"]))
    return kept, dropped


REAL_PREFIX = "real:"


def resolve_source(source: str | Path) -> str:
    """A model source as ``from_pretrained`` takes it: ``real:<name>`` (a ``real_models`` entry in
    params.yaml) -> ``data/models/real/<name>``, the directory ``real_model@<name>`` converts it into;
    a hub id or a local path is returned unchanged."""
    source = str(source)
    if not source.startswith(REAL_PREFIX):
        return source
    name = source[len(REAL_PREFIX):]
    path = Path("data/models/real") / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model source {source!r}: {path} has not been built; run "
                                f"`dvc repro real_model@{name}` first (params.yaml real_models.{name})")
    return str(path)


def load_pretrained(path_or_id: str | Path, attn_implementation: str = "sdpa"
                    ) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load model + processor from a local ``save_pretrained`` directory, a hub id (paper profile) or a
    real checkpoint (``real:<name>``, see :func:`resolve_source`)."""
    path_or_id = resolve_source(path_or_id)
    model = WhisperForConditionalGeneration.from_pretrained(str(path_or_id), attn_implementation=attn_implementation)
    processor = WhisperProcessor.from_pretrained(str(path_or_id))
    check_window(processor, model)
    return model, processor


def label_ids(tokenizer: WhisperTokenizer, text: str, language: str) -> list[int]:
    """Decoder targets: the prefix (language, task, notimestamps), the text, EOT — without SOT,
    which the model prepends itself when shifting labels right."""
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return tokenizer(text).input_ids[1:]
