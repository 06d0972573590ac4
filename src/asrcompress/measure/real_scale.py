"""Project a compressed model's *structure* onto a real architecture and time it (random weights).

Our compressed models are tiny; the papers' are Whisper-small/-medium, wav2vec2-base and
HuBERT-large. Speed does not transfer from a tiny model, but the structure does: the kept
fraction of FFN neurons and heads per layer, the removed/merged layers and the embedding rank.
``project_structure`` maps it onto a real config, ``build_real`` builds that architecture from
hyper-parameters written here (no hub) with random weights and applies it with
``compress.surgery.apply_structure``, and ``time_real`` times dense and compressed interleaved.

Layer projection (``project_structure``, ``layers=``; the metrics record it as ``real_layer_rule``).
When a stack has fewer layers than its base (removed layers, or merged pairs: a merged pair costs one
layer), the target keeps either
- ``count`` (the default, params ``measure.real_scale_layers``): as many layers *fewer* as the source
  lost: one merged pair of the 2-layer smoke decoder is one merged pair of Whisper-small's 12, so
  11 of 12 decoder layers; this is the recipe as specified (``p2.merge.n_pairs``, the same in both
  profiles). The paper's -18 % of the decoder is about 2 of 12 layers' parameters (``n_pairs: 2`` there);
- ``fraction``: the same *fraction* of layers fewer: 1 of 2 -> 6 of 12. On a 2-layer smoke model
  that halves the real decoder, far beyond the recipe and the paper (an overstatement; kept for
  comparison only).
Target layer j of N stands for source layer s = floor(j * n / N) of n and takes the widths of the
current layer that covers s (a merged layer covers both of its originals); under ``count`` the
layer dropped for a lost source layer s is the first target layer of s's bin, under ``fraction``
the whole bin. Same layer counts: identity.

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

Speed-ups (``real_scale_report``, ``speedup_<what>``; dense / compressed time, ``what`` = encoder,
decoder_token, 30s (the end-to-end figure: encoder + ``n_tokens`` decoder tokens) or forward (CTC)):
the point estimate is the ratio of the medians over the interleaved rounds; each round times dense
and compressed once, so every round gives a paired ratio, and ``_round_min`` / ``_round_median`` /
``_round_max`` are their spread, ``_ci_low`` / ``_ci_high`` a 95 % bootstrap interval of the point
estimate (rounds resampled, paired). At least ``MIN_REPEATS`` rounds are required.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
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
from asrcompress.measure.params import count_params, percent_reduction

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


LAYER_RULES = ("count", "fraction")
MIN_REPEATS = 5  # interleaved rounds needed for a speed-up interval (measure.real_scale_repeats)
CTC_SECONDS = 10.0  # audio per timed CTC forward


def _project_stack(srec: Mapping[str, Any], big_n: int, rule: str) -> list[dict[str, Any]]:
    """The target's layer records (``origin`` = target index) for one stack (module docstring)."""
    n, layers = int(srec["base_layers"]), srec["layers"]
    covering = {int(s): r for r in layers for s in r["origin"]}  # source index -> current layer
    firsts = {int(r["origin"][0]) for r in layers}
    lost = [s for s in range(n) if s not in firsts]  # removed, or absorbed into a merged layer
    bins: dict[int, list[int]] = {}
    for j in range(big_n):
        bins.setdefault(j * n // big_n, []).append(j)
    if rule == "fraction":
        dropped = {j for s in lost for j in bins.get(s, [])}
    else:  # count: one target layer per lost source layer
        dropped = set()
        for s in lost:
            j = next((j for j in bins.get(s, []) if j not in dropped), None)
            if j is None:  # fewer target than source layers: the nearest free slot
                j = next((j for j in sorted(range(big_n), key=lambda j: abs(j - s * big_n // n))
                          if j not in dropped), None)
            if j is not None:
                dropped.add(j)
    if layers and len(dropped) >= big_n:  # a stack with layers left keeps at least one
        dropped.discard(max(dropped))
    recs = []
    for j in range(big_n):
        if j in dropped:
            continue
        s = j * n // big_n
        src = covering.get(s) or min(layers, key=lambda r: min(abs(int(o) - s) for o in r["origin"]))
        recs.append({**copy.deepcopy(src), "origin": [j]})
    return recs


def project_structure(structure: Mapping[str, Any], target_config, layers: str = "count") -> dict[str, Any]:
    """A fractions record (see ``surgery.structure_fractions``) for ``target_config``: per-layer kept
    fractions mapped by relative position, and lost layers projected by ``layers`` (``count`` or
    ``fraction``; module docstring)."""
    if layers not in LAYER_RULES:
        raise ValueError(f"layer projection rule {layers!r}: expected one of {', '.join(LAYER_RULES)}")
    fr = structure_fractions(structure)
    cfg = target_config.to_dict()
    n_layers_key = {"encoder": "encoder_layers", "decoder": "decoder_layers"} if cfg["model_type"] == "whisper" \
        else {"encoder": "num_hidden_layers"}
    stacks = {}
    for stack, srec in fr["stacks"].items():
        big_n = int(cfg[n_layers_key[stack]])
        stacks[stack] = {"base_layers": big_n, "layers": _project_stack(srec, big_n, layers)}
    return {**fr, "stacks": stacks}


def build_real(name: str, structure: Mapping[str, Any] | None = None, device: str = "cpu", seed: int = 0,
               attn_implementation: str = "eager", layers: str = "count") -> torch.nn.Module:
    """Real architecture ``name`` with random weights (``seed``), in eval mode, optionally resized to
    ``structure`` (absolute or fractions record of any size; projected with ``project_structure`` under
    the layer rule ``layers``).
    ``device="meta"`` builds shapes only (for parameter counts)."""
    cfg = real_config(name, attn_implementation)
    model_cls = REAL_ARCHS[name][1]
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(cfg).eval()
    if structure is not None:  # outside the device context: surgery builds its index tensors on CPU
        apply_structure(model, project_structure(structure, cfg, layers))
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


def time_rounds(models: Mapping[str, torch.nn.Module], n_tokens: int = 32, ctc_seconds: float = 10.0,
                warmup: int = 1, repeats: int = 5, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Interleaved per-round seconds of several variants of one family: ``{variant: {what: [seconds per
    round], ...}}`` with Whisper ``encoder`` (one 30 s window), ``decoder_token`` (per token),
    ``30s`` (encoder + ``n_tokens`` tokens, the same round's calls) and ``encoder_timed_with``; CTC
    ``forward`` (``ctc_seconds`` of audio). Round r of every variant is the same shuffled round."""
    first_name, first = next(iter(models.items()))
    whisper = first.config.model_type == "whisper"
    fns: dict[str, Any] = {}
    same_encoder: dict[str, str] = {}  # variant -> the variant whose encoder timings it shares
    if whisper:
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
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        if whisper:
            enc = times[f"{same_encoder.get(name, name)}/encoder"]
            dec = times[f"{name}/decoder"]
            out[name] = {"encoder": enc, "decoder_token": [t / n_tokens for t in dec],
                         "30s": [e + d for e, d in zip(enc, dec, strict=True)],
                         "encoder_timed_with": same_encoder.get(name, name)}
        else:
            out[name] = {"forward": times[f"{name}/forward"]}
    return out


def time_real(models: Mapping[str, torch.nn.Module], n_tokens: int = 32, ctc_seconds: float = 10.0,
              warmup: int = 1, repeats: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Interleaved timings of several variants of one family (``time_rounds``), summarised. Returns
    ``{variant: metrics}`` with Whisper ``latency_encoder_ms_*`` (per 30 s window),
    ``latency_decoder_token_ms_*`` (per token) and ``rtfx_30s`` = 30 / (encoder p50 + n_tokens x token
    p50); CTC ``latency_forward_ms_*`` per ``ctc_seconds`` of audio and ``rtfx``."""
    rounds = time_rounds(models, n_tokens, ctc_seconds, warmup, repeats, seed)
    return {name: _summary(r, n_tokens, ctc_seconds) for name, r in rounds.items()}


def _summary(r: Mapping[str, Any], n_tokens: int, ctc_seconds: float) -> dict[str, Any]:
    if "forward" in r:
        out = summarize(r["forward"], "latency_forward")
        out["rtfx"] = ctc_seconds / (out["latency_forward_ms_p50"] / 1e3)
        out["audio_s"] = ctc_seconds
        return out
    out = summarize(r["encoder"], "latency_encoder")
    out["encoder_timed_with"] = r["encoder_timed_with"]
    out.update(summarize(r["decoder_token"], "latency_decoder_token"))
    out["rtfx_30s"] = 30.0 / ((out["latency_encoder_ms_p50"] + n_tokens * out["latency_decoder_token_ms_p50"]) / 1e3)
    out["decode_tokens"] = n_tokens
    return out


def speedup_spread(dense: Mapping[str, list[float]], comp: Mapping[str, list[float]], what: str,
                   n_tokens: int = 1, n_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """``speedup_<what>`` (dense / compressed, ratio of the medians over the rounds; for ``30s``
    (encoder median + ``n_tokens`` x token median), as ``rtfx_30s``), its per-round paired ratios'
    ``_round_min`` / ``_round_median`` / ``_round_max`` and a 95 % bootstrap ``_ci_low`` / ``_ci_high``
    (rounds resampled with replacement, paired; ``seed``); ``_rounds`` = the number of rounds."""
    def point(d: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> float | np.ndarray:
        if what != "30s":
            return np.median(d[what][idx], axis=-1)
        return np.median(d["encoder"][idx], axis=-1) + n_tokens * np.median(d["decoder_token"][idx], axis=-1)

    keys = ("encoder", "decoder_token") if what == "30s" else (what,)
    d = {k: np.asarray(dense[k], dtype=np.float64) for k in (*keys, what) if k in dense}
    c = {k: np.asarray(comp[k], dtype=np.float64) for k in (*keys, what) if k in comp}
    n = len(d[keys[0]])
    if n != len(c[keys[0]]):
        raise ValueError(f"speedup_spread({what}): {n} dense rounds, {len(c[keys[0]])} compressed")
    per_round = np.asarray(dense[what], dtype=np.float64) / np.asarray(comp[what], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    boot = point(d, idx) / point(c, idx)
    name = f"speedup_{what}"
    return {name: float(point(d, slice(None)) / point(c, slice(None))),
            f"{name}_round_min": float(per_round.min()), f"{name}_round_median": float(np.median(per_round)),
            f"{name}_round_max": float(per_round.max()),
            f"{name}_ci_low": float(np.percentile(boot, 2.5)), f"{name}_ci_high": float(np.percentile(boot, 97.5)),
            f"{name}_rounds": n}


def _same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same parameter names and shapes (same architecture; weight values do not change speed)."""
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return sa == {k: tuple(v.shape) for k, v in b.state_dict().items()}


def _ctc_forward(model, audio: torch.Tensor) -> None:
    with torch.inference_mode():
        model(audio)


def _layer_counts(model: torch.nn.Module) -> dict[str, int]:
    cfg = model.config
    if cfg.model_type == "whisper":
        return {"encoder_layers": len(model.model.encoder.layers), "decoder_layers": len(model.model.decoder.layers)}
    return {"encoder_layers": len(model.base_model.encoder.layers)}


def real_scale_report(name: str, structure: Mapping[str, Any], n_tokens: int = 32, warmup: int = 1,
                      repeats: int = 5, seed: int = 0, flops: bool = True, layers: str = "count") -> dict[str, Any]:
    """Dense vs compressed ``name``: parameters, layer counts, FLOPs and interleaved latency. Flat keys:
    the compressed model's metrics, the dense model's with suffix ``_dense``, ``*_ratio`` = compressed /
    dense for latencies and FLOPs, ``speedup_*`` with their spread (``speedup_spread``; Whisper:
    encoder, decoder_token, 30s; CTC: forward), ``params_reduction_pct``, ``layer_rule`` (``layers``,
    see ``project_structure``) and the runtime (threads as set by the caller). ``repeats`` (interleaved
    rounds) must be at least ``MIN_REPEATS``."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"real_scale_report: repeats={repeats}: at least {MIN_REPEATS} interleaved rounds are "
                         "needed for a speed-up interval (params.yaml: measure.real_scale_repeats)")
    dense, comp = build_real(name, seed=seed), build_real(name, structure, seed=seed, layers=layers)
    rounds = time_rounds({"dense": dense, "compressed": comp}, n_tokens=n_tokens, ctc_seconds=CTC_SECONDS,
                         warmup=warmup, repeats=repeats, seed=seed)
    out: dict[str, Any] = {"arch": name, "layer_rule": layers, **runtime_info()}
    for variant, model in (("compressed", comp), ("dense", dense)):
        sfx = "" if variant == "compressed" else "_dense"
        m = {"params_m": count_params(model)["params_m"], **_layer_counts(model),
             **_summary(rounds[variant], n_tokens, CTC_SECONDS)}
        if flops:
            kw = {"n_new_tokens": n_tokens, "prompt_len": 1} if model.config.model_type == "whisper" else {}
            m.update(flops_metrics(model, **kw))
        out.update({k + sfx: v for k, v in m.items()})
    for k in _RATIO_KEYS:
        if out.get(k + "_dense"):
            out[k + "_ratio"] = out[k] / out[k + "_dense"]
    whats = ("encoder", "decoder_token", "30s") if "30s" in rounds["dense"] else ("forward",)
    for what in whats:
        out.update(speedup_spread(rounds["dense"], rounds["compressed"], what, n_tokens=n_tokens, seed=seed))
    out["params_reduction_pct"] = percent_reduction(out["params_m"], out["params_m_dense"])
    return out


_RATIO_KEYS = ("params_m", "latency_encoder_ms_p50", "latency_decoder_token_ms_p50", "latency_forward_ms_p50",
               "gmacs_encoder", "gmacs_decoder_token", "gmacs_decode", "gmacs_utterance", "gmacs_per_audio_s")
