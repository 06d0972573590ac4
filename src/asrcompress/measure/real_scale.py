"""Project a compressed model's *structure* onto a real architecture and time it (random weights).

Our compressed models are tiny; the papers' are Whisper-small/-medium, wav2vec2-base and
HuBERT-large. Speed does not transfer from a tiny model, but the structure does: the kept
fraction of FFN neurons and heads per layer, the removed/merged layers and the embedding rank.
``project_structure`` maps it onto a real config, ``build_real`` builds that architecture from
hyper-parameters written here (no hub) with random weights and applies it with
``compress.surgery.apply_structure``, and ``time_real`` times dense and compressed interleaved.

Layer mapping when the layer counts differ (tiny 2+2 -> small 12+12): real layer j of N takes
the record of source layer s = floor(j * n / N) of n; if s was removed, or is the second half of
a merged pair, real layer j is removed (a merged pair costs one layer). Same counts: identity.

What is timed (CPU, threads fixed by the caller, greedy, batch 1, eager attention):
- Whisper encoder: one 30 s window (3000 mel frames), per call; a variant whose encoder has the
  same architecture as the first variant's shares its timings (`encoder_timed_with`): weight values
  cannot change speed, and timing it twice only adds noise and minutes. The encoder pass that
  makes the decoder's cached states is that encoder's first warm-up call (about 7 s of the 30 s
  Whisper-small encoder at one thread not spent again).
- Whisper decoder per token: ``whisper_greedy_decode`` of exactly ``n_tokens`` tokens (EOS
  ignored: random weights would stop anywhere) on cached encoder states, divided by
  ``n_tokens``; it includes the first call (prompt + cross K/V) and the logits.
- CTC: the full forward on ``ctc_seconds`` (10 s) of audio.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from asrcompress.compress.surgery import apply_structure, structure_fractions
from asrcompress.measure.flops import flops_metrics
from asrcompress.measure.latency import interleaved_timings, runtime_info, summarize, whisper_greedy_decode
from asrcompress.measure.params import count_params

_WHISPER_COMMON = dict(vocab_size=51865, num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
                       decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257,
                       pad_token_id=50257)
REAL_ARCHS: dict[str, tuple[type, type, dict[str, Any]]] = {
    # name: (config class, model class, hyper-parameters of the published checkpoint)
    "whisper-small": (WhisperConfig, WhisperForConditionalGeneration, dict(
        _WHISPER_COMMON, d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "whisper-medium": (WhisperConfig, WhisperForConditionalGeneration, dict(
        _WHISPER_COMMON, d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
    "wav2vec2-base": (Wav2Vec2Config, Wav2Vec2ForCTC, dict(  # default conv front-end, group norm
        vocab_size=32, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        pad_token_id=0, ctc_zero_infinity=True)),
    "hubert-large": (HubertConfig, HubertForCTC, dict(
        vocab_size=32, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, pad_token_id=0,
        ctc_zero_infinity=True)),
}
# distinct parameters on the meta device (shared/OFFLINE_NOTES.md); tested
REFERENCE_PARAMS = {"whisper-small": 241_734_912, "whisper-medium": 763_857_920,
                    "wav2vec2-base": 94_396_320, "hubert-large": 315_471_520}
SAMPLE_RATE = 16_000


def real_config(name: str, attn_implementation: str = "eager"):
    """The config of a real architecture, built from the hyper-parameters above."""
    if name not in REAL_ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(REAL_ARCHS)}")
    cfg_cls, _, hp = REAL_ARCHS[name]
    return cfg_cls(**hp, attn_implementation=attn_implementation)


def project_structure(structure: Mapping[str, Any], target_config) -> dict[str, Any]:
    """A fractions record (see ``surgery.structure_fractions``) for ``target_config``, mapping the
    source's layers onto the target's by relative position (module docstring)."""
    fr = structure_fractions(structure)
    cfg = target_config.to_dict()
    n_layers_key = {"encoder": "encoder_layers", "decoder": "decoder_layers"} if cfg["model_type"] == "whisper" \
        else {"encoder": "num_hidden_layers"}
    stacks = {}
    for stack, srec in fr["stacks"].items():
        n, big_n = int(srec["base_layers"]), int(cfg[n_layers_key[stack]])
        by_origin = {int(r["origin"][0]): r for r in srec["layers"]}
        recs = []
        for j in range(big_n):
            src = by_origin.get(j * n // big_n)
            if src is not None:
                recs.append({**copy.deepcopy(src), "origin": [j]})
        stacks[stack] = {"base_layers": big_n, "layers": recs}
    return {**fr, "stacks": stacks}


def build_real(name: str, structure: Mapping[str, Any] | None = None, device: str = "cpu", seed: int = 0,
               attn_implementation: str = "eager") -> torch.nn.Module:
    """Real architecture ``name`` with random weights (``seed``), in eval mode, optionally resized to
    ``structure`` (absolute or fractions record of any size; projected with ``project_structure``).
    ``device="meta"`` builds shapes only (for parameter counts)."""
    cfg = real_config(name, attn_implementation)
    model_cls = REAL_ARCHS[name][1]
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(cfg).eval()
    if structure is not None:  # outside the device context: surgery builds its index tensors on CPU
        apply_structure(model, project_structure(structure, cfg))
    return model


def _whisper_fns(model, n_tokens: int) -> tuple:
    feats = torch.randn(1, model.config.num_mel_bins, 2 * model.config.max_source_positions,
                        generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        enc = model.model.encoder(feats).last_hidden_state

    def encoder():
        with torch.inference_mode():
            model.model.encoder(feats)

    def decoder():
        whisper_greedy_decode(model, None, n_tokens, encoder_hidden_states=enc)

    return encoder, decoder


def time_real(models: Mapping[str, torch.nn.Module], n_tokens: int = 32, ctc_seconds: float = 10.0,
              warmup: int = 1, repeats: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Interleaved timings of several variants of one family. Returns ``{variant: metrics}`` with
    Whisper ``latency_encoder_ms_*`` (per 30 s window), ``latency_decoder_token_ms_*`` (per token)
    and ``rtfx_30s`` = 30 / (encoder p50 + n_tokens x token p50); CTC ``latency_forward_ms_*`` per
    ``ctc_seconds`` of audio and ``rtfx``."""
    first_name, first = next(iter(models.items()))
    fns: dict[str, Any] = {}
    same_encoder: dict[str, str] = {}  # variant -> the variant whose encoder timings it shares
    if first.config.model_type == "whisper":
        for name, m in models.items():
            enc_fn, dec_fn = _whisper_fns(m, n_tokens)
            fns[f"{name}/decoder"] = dec_fn
            if name != first_name and _same_shapes(m.model.encoder, first.model.encoder):
                same_encoder[name] = first_name  # identical architecture: speed cannot differ, time once
            else:
                fns[f"{name}/encoder"] = enc_fn
    else:
        audio = torch.randn(1, int(ctc_seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
        for name, m in models.items():
            fns[f"{name}/forward"] = (lambda m=m: _ctc_forward(m, audio))
    # building a decoder timing ran that model's encoder once on the same input: its first warm-up
    warmed = [k for k in fns if k.endswith("/encoder")]
    times = interleaved_timings(fns, warmup=warmup, repeats=repeats, seed=seed, warmed=warmed)
    out: dict[str, dict[str, float]] = {}
    for name in models:
        if first.config.model_type == "whisper":
            r = summarize(times[f"{same_encoder.get(name, name)}/encoder"], "latency_encoder")
            r["encoder_timed_with"] = same_encoder.get(name, name)
            r.update(summarize([t / n_tokens for t in times[f"{name}/decoder"]], "latency_decoder_token"))
            r["rtfx_30s"] = 30.0 / ((r["latency_encoder_ms_p50"] + n_tokens * r["latency_decoder_token_ms_p50"]) / 1e3)
            r["decode_tokens"] = n_tokens
        else:
            r = summarize(times[f"{name}/forward"], "latency_forward")
            r["rtfx"] = ctc_seconds / (r["latency_forward_ms_p50"] / 1e3)
            r["audio_s"] = ctc_seconds
        out[name] = r
    return out


def _same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same parameter names and shapes (same architecture; weight values do not change speed)."""
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return sa == {k: tuple(v.shape) for k, v in b.state_dict().items()}


def _ctc_forward(model, audio: torch.Tensor) -> None:
    with torch.inference_mode():
        model(audio)


def real_scale_report(name: str, structure: Mapping[str, Any], n_tokens: int = 32, warmup: int = 1,
                      repeats: int = 5, seed: int = 0, flops: bool = True) -> dict[str, Any]:
    """Dense vs compressed ``name``: parameters, FLOPs and interleaved latency. Flat keys: the
    compressed model's metrics, the dense model's with suffix ``_dense``, ``*_ratio`` =
    compressed / dense for latencies and FLOPs, and the runtime (threads as set by the caller)."""
    dense, comp = build_real(name, seed=seed), build_real(name, structure, seed=seed)
    times = time_real({"dense": dense, "compressed": comp}, n_tokens=n_tokens, warmup=warmup,
                      repeats=repeats, seed=seed)
    out: dict[str, Any] = {"arch": name, **runtime_info()}
    for variant, model in (("compressed", comp), ("dense", dense)):
        sfx = "" if variant == "compressed" else "_dense"
        m = {"params_m": count_params(model)["params_m"], **times[variant]}
        if flops:
            kw = {"n_new_tokens": n_tokens, "prompt_len": 1} if model.config.model_type == "whisper" else {}
            m.update(flops_metrics(model, **kw))
        out.update({k + sfx: v for k, v in m.items()})
    for k in _RATIO_KEYS:
        if out.get(k + "_dense"):
            out[k + "_ratio"] = out[k] / out[k + "_dense"]
    return out


_RATIO_KEYS = ("params_m", "latency_encoder_ms_p50", "latency_decoder_token_ms_p50", "latency_forward_ms_p50",
               "gmacs_encoder", "gmacs_decoder_token", "gmacs_decode", "gmacs_utterance", "gmacs_per_audio_s")
