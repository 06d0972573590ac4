"""MACs and FLOPs with ptflops (pytorch backend), on the model exactly as it is.

What is counted (ptflops pytorch backend): nn.Linear / nn.Conv1d multiply-accumulates (plus one
per bias element), attention ``torch.matmul`` (Q K^T and A V), and one op per element for layer
norms and softmax (not for the FFN activation: transformers' GELUActivation module is unknown
to ptflops; only the direct ``F.gelu`` of Whisper's conv front-end counts). The low-rank token embedding / output projection of
``compress.surgery`` (``@`` and ``F.linear``, which ptflops does not see) get explicit hooks:
rank x d_model MACs per embedded token, rank x (d_model + vocab) per token of logits. FLOPs = 2 x MACs (the usual convention; both are reported).
Physically removed neurons/heads/layers shrink the Linear shapes and lower the count; zeroed or
masked weights do not (ptflops reads shapes, never values).

Attention: with PyTorch SDPA (the transformers default) ptflops sees no matmul, so the score
and value products would be missed. Every count here runs under ``eager_attention(model)``,
which switches the model's configs to ``attn_implementation="eager"`` (explicit
``torch.matmul``) for the count and restores the previous setting afterwards. The outputs are
the same; only the kernel differs.

Whisper (generate() with a KV cache, greedy, batch 1):
- ``encoder``: one 30 s window (2 x max_source_positions mel frames), conv front-end included.
- ``cross_kv``: the cross-attention K/V projections of the encoder states, computed once per
  utterance on the first decoder call and cached.
- ``decoder step at past length L``: one new token attending to L cached self-attention
  positions (+ itself) and to the cached encoder K/V, plus ``proj_out`` logits for that token.
  Its cost is affine in L (only the self-attention products grow), so step(L) = a + b L is
  measured at L = 0 and L = ``probe_len`` and reused for any L.
- ``utterance``: encoder + cross_kv + sum of step(t) over every token fed to the decoder:
  the prompt (counted as single cached steps; a one-call prefill does the same projections and
  differs only by the causal P x P score block) and all generated tokens but the last.
CTC models: the whole forward (conv front-end, transformer, lm_head) on ``n_samples`` of audio;
per audio second = MACs x 16000 / n_samples (attention is quadratic, so state the length).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import torch
from ptflops import get_model_complexity_info
from torch import nn

SAMPLE_RATE = 16_000


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Temporarily set ``attn_implementation="eager"`` on every config reachable from ``model``."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "_attn_implementation")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield model
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def _low_rank_embedding_hook(module, inputs, output) -> None:
    # A[ids] @ B: rank x d_model MACs per token (the @ operator is invisible to ptflops)
    module.__flops__ += int(output.numel() // module.embedding_dim) * module.rank * module.embedding_dim


def _low_rank_logits_hook(module, inputs, output) -> None:
    # (h @ B^T) @ A^T through F.linear (not patched by ptflops): rank x (d_model + vocab) per token
    emb = module.embedding
    tokens = int(output.numel() // emb.num_embeddings)
    module.__flops__ += tokens * emb.rank * (emb.embedding_dim + emb.num_embeddings)


def _int8_linear_hook(module, inputs, output) -> None:
    # an int8 linear does the MACs of the float one (int8 x int8); counted as ptflops counts nn.Linear
    _, b = module._packed_params._weight_bias()
    module.__flops__ += int(inputs[0].numel() // module.in_features) * (
        module.in_features * module.out_features + (module.out_features if b is not None else 0))


def _custom_hooks() -> dict:
    """ptflops hooks for modules it cannot see into: the low-rank embedding of ``compress.surgery`` and
    the int8 linears of ``compress.int8_dynamic`` (counted as the float ones: MACs, not bytes)."""
    try:
        from asrcompress.compress.int8_dynamic import QLinear
        from asrcompress.compress.surgery import LowRankEmbedding, LowRankOutputProjection
    except ImportError:
        return {}
    return {LowRankEmbedding: _low_rank_embedding_hook, LowRankOutputProjection: _low_rank_logits_hook,
            QLinear: _int8_linear_hook}


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """ptflops MACs of ``module(x)`` for one positional input (batch size 1). Raises on failure.

    Not on the meta device: there nn.Linear on 3-D inputs is decomposed in Python into
    ``torch.mm``, which ptflops counts a second time (measured: 2x the linear MACs).
    """
    if x.device.type == "meta" or any(p.device.type == "meta" for p in module.parameters()):
        raise ValueError("count MACs on a real device (cpu/cuda): ptflops double-counts Linear on meta")
    sink = io.StringIO()  # ptflops prints to ``ost`` (its default is bound to stdout at import)
    with torch.inference_mode():
        macs, _ = get_model_complexity_info(module, tuple(x.shape[1:]), input_constructor=lambda _: x,
                                            as_strings=False, print_per_layer_stat=False,
                                            backend="pytorch", ost=sink,
                                            custom_modules_hooks=_custom_hooks())
    if macs is None:
        raise RuntimeError(f"ptflops failed on {type(module).__name__}: {sink.getvalue()[-2000:]}")
    return int(macs)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


# ------------------------------------------------------------------------------------ Whisper
class _WhisperEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, features):
        return self.encoder(features).last_hidden_state


class _WhisperDecoderStep(nn.Module):
    """One cached decoder step + logits; ``cache`` (deep-copied per call) holds the past."""

    def __init__(self, model, enc, cache):
        super().__init__()
        self.decoder, self.proj_out = model.model.decoder, model.proj_out
        self.enc, self.cache = enc, cache

    def forward(self, ids):
        cache = copy.deepcopy(self.cache) if self.cache is not None else None
        h = self.decoder(input_ids=ids, encoder_hidden_states=self.enc, past_key_values=cache,
                         use_cache=True).last_hidden_state
        return self.proj_out(h[:, -1:])


def _whisper_encoder_states(model) -> torch.Tensor:
    device, dtype = _device_dtype(model)
    cfg = model.config
    return torch.zeros(1, cfg.max_source_positions, cfg.d_model, device=device, dtype=dtype)


def _prefilled_cache(model, enc: torch.Tensor, past_len: int):
    """EncoderDecoderCache with cross K/V filled and ``past_len`` self-attention positions."""
    from transformers import DynamicCache, EncoderDecoderCache

    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids = torch.full((1, max(past_len, 1)), model.config.decoder_start_token_id, device=enc.device)
    with torch.inference_mode():
        model.model.decoder(input_ids=ids, encoder_hidden_states=enc, past_key_values=cache, use_cache=True)
    if past_len == 0:  # keep the cross K/V, drop the one self-attention position
        cache.self_attention_cache.crop(-1)  # transformers 5: a negative count of tokens to remove
    return cache


def whisper_encoder_macs(model) -> int:
    """MACs of the Whisper encoder on one window of 2 x max_source_positions mel frames."""
    device, dtype = _device_dtype(model)
    cfg = model.config
    x = torch.zeros(1, cfg.num_mel_bins, 2 * cfg.max_source_positions, device=device, dtype=dtype)
    with eager_attention(model):
        return count_macs(_WhisperEncoder(model), x)


def whisper_decoder_step_macs(model, past_len: int) -> int:
    """MACs of one cached decoder step at self-attention past length ``past_len``, logits included."""
    enc = _whisper_encoder_states(model)
    ids = torch.full((1, 1), model.config.decoder_start_token_id, device=enc.device)
    with eager_attention(model):
        return count_macs(_WhisperDecoderStep(model, enc, _prefilled_cache(model, enc, past_len)), ids)


def _first_call_macs(model) -> int:
    """MACs of the first decoder call (one token, empty cache: cross K/V computed), logits included."""
    enc = _whisper_encoder_states(model)
    ids = torch.full((1, 1), model.config.decoder_start_token_id, device=enc.device)
    with eager_attention(model):
        return count_macs(_WhisperDecoderStep(model, enc, None), ids)


def whisper_cross_kv_macs(model) -> int:
    """MACs of computing the cross-attention K/V of all decoder layers (once per utterance)."""
    return _first_call_macs(model) - whisper_decoder_step_macs(model, 0)


@dataclass
class WhisperCost:
    """Measured Whisper costs (MACs): encoder, cross K/V, and step(L) = step_base + step_slope L."""

    encoder: int
    cross_kv: int
    step_base: int
    step_slope: float

    def step(self, past_len: int) -> float:
        return self.step_base + self.step_slope * past_len

    def decode_macs(self, n_new_tokens: int, prompt_len: int = 1) -> float:
        """Decoder MACs of one utterance: cross K/V + steps at past lengths 0 .. P + n - 2."""
        n_steps = prompt_len + n_new_tokens - 1
        return self.cross_kv + n_steps * self.step_base + self.step_slope * n_steps * (n_steps - 1) / 2

    def utterance_macs(self, n_new_tokens: int, prompt_len: int = 1) -> float:
        return self.encoder + self.decode_macs(n_new_tokens, prompt_len)


def whisper_cost(model, probe_len: int = 16) -> WhisperCost:
    """Measure the encoder, cross K/V and the affine per-step cost (steps at L=0 and L=probe_len)."""
    s0, s1 = whisper_decoder_step_macs(model, 0), whisper_decoder_step_macs(model, probe_len)
    return WhisperCost(encoder=whisper_encoder_macs(model), cross_kv=_first_call_macs(model) - s0,
                       step_base=s0, step_slope=(s1 - s0) / probe_len)


def whisper_flops(model, n_new_tokens: int = 32, prompt_len: int = 4, past_len: int | None = None,
                  decoded_lengths: list[int] | None = None) -> dict:
    """Flat Whisper metrics (``gmacs_*`` and ``gflops_*`` = 2 x MACs, in 1e9):
    ``encoder`` (one window); ``decoder_token`` (one step at ``past_len``, default: the middle of
    an utterance of ``prompt_len + n_new_tokens`` tokens); ``cross_kv`` (once per utterance);
    ``decode`` (all decoder work of one utterance: cross_kv + every step); ``utterance``
    (encoder + decode). Utterance figures are for ``n_new_tokens`` generated tokens, or the mean
    over ``decoded_lengths`` when given."""
    cost = whisper_cost(model)
    if past_len is None:
        past_len = (prompt_len + n_new_tokens) // 2
    if decoded_lengths:
        utt = sum(cost.utterance_macs(n, prompt_len) for n in decoded_lengths) / len(decoded_lengths)
    else:
        utt = cost.utterance_macs(n_new_tokens, prompt_len)
    out = {"encoder": cost.encoder, "decoder_token": cost.step(past_len), "cross_kv": cost.cross_kv,
           "decode": utt - cost.encoder, "utterance": utt}
    metrics: dict = {}
    for k, v in out.items():
        metrics[f"gmacs_{k}"] = v / 1e9
        metrics[f"gflops_{k}"] = 2 * v / 1e9
    metrics.update(decoder_token_past_len=past_len, flops_prompt_len=prompt_len,
                   flops_new_tokens=None if decoded_lengths else n_new_tokens,
                   decoder_step_macs_per_past_token=cost.step_slope)
    return metrics


# -------------------------------------------------------------------------------- CTC models
def ctc_macs(model: nn.Module, n_samples: int = 10 * SAMPLE_RATE) -> int:
    """MACs of a full CTC forward (wav2vec2/HuBERT + lm_head) on ``n_samples`` of audio."""
    device, dtype = _device_dtype(model)
    x = torch.zeros(1, n_samples, device=device, dtype=dtype)

    class _Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, audio):
            return self.m(audio).logits

    with eager_attention(model):
        return count_macs(_Logits(model), x)


def ctc_flops(model: nn.Module, seconds: float = 10.0) -> dict:
    """``gmacs_per_audio_s`` / ``gflops_per_audio_s`` measured on ``seconds`` of audio."""
    macs = ctc_macs(model, int(seconds * SAMPLE_RATE))
    return {"gmacs_per_audio_s": macs / seconds / 1e9, "gflops_per_audio_s": 2 * macs / seconds / 1e9,
            "gmacs_forward": macs / 1e9, "flops_audio_s": seconds}


def flops_metrics(model: nn.Module, **kwargs) -> dict:
    """``whisper_flops`` or ``ctc_flops`` according to ``model.config.model_type``."""
    if model.config.model_type == "whisper":
        return whisper_flops(model, **kwargs)
    return ctc_flops(model, **kwargs)
