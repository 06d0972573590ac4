"""BaldWhisper step 1: merge pairs of adjacent Whisper decoder layers (Sy et al., arXiv 2510.08599).

Instead of dropping decoder layers, a pair ``(i, i + 1)`` is replaced by one layer whose every parameter
is ``alpha * W_i + beta * W_{i+1}`` (:func:`asrcompress.compress.surgery.merge_layers` does the edit).
Which pairs to merge is chosen from calibration data: the decoder is run teacher-forced on a few
training utterances and the residual stream is recorded at every layer boundary.

Residual-stream boundaries (used here and by :mod:`asrcompress.compress.distill`)
--------------------------------------------------------------------------------
For a decoder with ``n`` layers, boundary ``0`` is the input of layer 0 (token embedding + positions) and
boundary ``k`` (``1 <= k <= n``) the output of layer ``k - 1``, before the final layer norm; ``"final"`` is
the output of the decoder's final layer norm (the ``h`` the logits are computed from).

Pair similarity (one number per adjacent pair, mean over real target tokens, padding excluded)
----------------------------------------------------------------------------------------------
* ``output``: cosine of the two layers' outputs, ``cos(x_{i+1}, x_{i+2})`` -- how little layer ``i + 1``
  changes the stream after layer ``i`` (the default; the brief's "outputs of layer i and i+1").
* ``pair_io``: cosine of the stream before and after the pair, ``cos(x_i, x_{i+2})`` -- how little the
  pair changes the stream together (ShortGPT's block influence, for a block of two layers).
* ``update``: cosine of the two residual updates, ``cos(x_{i+1} - x_i, x_{i+2} - x_{i+1})`` -- whether the
  two layers push the stream the same way.
All three are recorded; ``similarity`` picks the one that ranks pairs. The chosen pairs are the set of
``n_pairs`` disjoint adjacent pairs with the largest total score (exact, by dynamic programming).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from asrcompress.compress.surgery import SurgeryError, merge_layers, structure_of

__all__ = [
    "SIMILARITIES",
    "DecoderStates",
    "valid_token_mask",
    "pair_similarity",
    "choose_pairs",
    "merge_decoder_pairs",
    "merge_most_similar",
]

SIMILARITIES = ("output", "pair_io", "update")


def valid_token_mask(batch: Mapping[str, Tensor]) -> Tensor:
    """(batch, tokens) bool mask of the decoder positions that carry a real target (``labels != -100``).

    With teacher forcing the decoder input is ``labels`` shifted right, so position ``t`` of the decoder
    predicts ``labels[:, t]`` and the masks line up."""
    return batch["labels"] != -100


class DecoderStates:
    """Context manager recording the Whisper decoder's residual stream during forward passes.

    After a forward pass, ``boundaries[k]`` holds boundary ``k`` (see the module docstring) as a
    ``(batch, tokens, d_model)`` tensor and ``final`` the final layer norm's output. Tensors are detached
    unless ``keep_grad`` (for a student being trained). Each forward overwrites the previous one. The hooks
    are removed on exit, so the model is left unchanged.
    """

    def __init__(self, model: nn.Module, keep_grad: bool = False) -> None:
        self.decoder = model.model.decoder
        self.keep_grad = keep_grad
        self.boundaries: list[Tensor | None] = [None] * (len(self.decoder.layers) + 1)
        self.final: Tensor | None = None
        self._handles: list[Any] = []

    def _keep(self, t: Tensor) -> Tensor:
        return t if self.keep_grad else t.detach()

    def __enter__(self) -> DecoderStates:
        layers = self.decoder.layers
        if len(layers) == 0:
            raise SurgeryError("decoder has no layers to record")

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.boundaries[0] = self._keep(hidden)

        def make_hook(k: int):
            def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
                self.boundaries[k] = self._keep(output[0] if isinstance(output, tuple) else output)
            return hook

        def final_hook(_module: nn.Module, _args: tuple, output: Tensor) -> None:
            self.final = self._keep(output)

        self._handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        self._handles += [layer.register_forward_hook(make_hook(i + 1)) for i, layer in enumerate(layers)]
        self._handles.append(self.decoder.layer_norm.register_forward_hook(final_hook))
        return self

    def state(self, key: int | str) -> Tensor:
        """Boundary ``key`` (an int) or ``"final"`` from the last forward pass."""
        value = self.final if key == "final" else self.boundaries[int(key)]
        if value is None:
            raise RuntimeError(f"decoder state {key!r} was not recorded (run a forward pass inside the context)")
        return value

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _masked_cos_sum(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """Sum over the tokens in ``mask`` of the per-token cosine of ``a`` and ``b`` (zero vectors give 0)."""
    cos = nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)
    return float(cos[mask].sum())


@torch.no_grad()
def pair_similarity(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> list[dict[str, Any]]:
    """Similarity of every adjacent decoder pair on teacher-forced calibration ``batches``.

    Each batch holds ``input_features`` and ``labels`` (as built by ``WhisperCollator``). Returns one record
    per pair ``(first, first + 1)`` with ``first`` (current position), ``origin`` (original layer indices of
    both layers), ``output_cos``, ``pair_io_cos``, ``update_cos`` (see the module docstring) and ``tokens``
    (number of target tokens averaged over).
    """
    was_training = model.training
    model.eval()
    n = len(model.model.decoder.layers)
    if n < 2:
        raise SurgeryError(f"decoder: {n} layer(s), no adjacent pair to merge")
    sums = {name: [0.0] * (n - 1) for name in SIMILARITIES}
    tokens = 0
    try:
        with DecoderStates(model) as rec:
            for batch in batches:
                model(input_features=batch["input_features"], labels=batch["labels"])
                mask = valid_token_mask(batch)
                x = [rec.state(k) for k in range(n + 1)]
                for i in range(n - 1):
                    pairs = {"output": (x[i + 1], x[i + 2]), "pair_io": (x[i], x[i + 2]),
                             "update": (x[i + 1] - x[i], x[i + 2] - x[i + 1])}
                    for name, (a, b) in pairs.items():
                        sums[name][i] += _masked_cos_sum(a, b, mask)
                tokens += int(mask.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("pair_similarity: calibration batches hold no target token")
    origins = [rec["origin"] for rec in structure_of(model)["stacks"]["decoder"]["layers"]]
    return [{"first": i, "origin": origins[i] + origins[i + 1],
             **{f"{name}_cos": sums[name][i] / tokens for name in SIMILARITIES}, "tokens": tokens}
            for i in range(n - 1)]


def choose_pairs(scores: Sequence[float], n_pairs: int) -> list[int]:
    """First indices of the ``n_pairs`` disjoint adjacent pairs with the largest total score.

    ``scores[i]`` scores pair ``(i, i + 1)`` of a stack of ``len(scores) + 1`` layers. Exact (dynamic
    programming over prefixes); among equal totals the pairs nearer the start win. Returns sorted indices.
    """
    n_layers = len(scores) + 1
    if n_pairs < 0 or 2 * n_pairs > n_layers:
        raise ValueError(f"cannot choose {n_pairs} disjoint pairs among {n_layers} layers")
    neg = float("-inf")
    # best[i][k]: best total using layers 0..i-1 with k pairs; took[i][k]: pair (i-2, i-1) taken
    best = [[neg] * (n_pairs + 1) for _ in range(n_layers + 1)]
    took = [[False] * (n_pairs + 1) for _ in range(n_layers + 1)]
    for i in range(n_layers + 1):
        best[i][0] = 0.0
    for i in range(2, n_layers + 1):
        for k in range(1, n_pairs + 1):
            skip, take = best[i - 1][k], best[i - 2][k - 1] + float(scores[i - 2])
            if take > skip:  # strict: on ties keep the earlier solution (pairs nearer the start)
                best[i][k], took[i][k] = take, True
            else:
                best[i][k] = skip
    out, i, k = [], n_layers, n_pairs
    while k > 0:
        if took[i][k]:
            out.append(i - 2)
            i, k = i - 2, k - 1
        else:
            i -= 1
    return sorted(out)


def _per_pair(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} merged pairs")
    return values


def merge_decoder_pairs(model: nn.Module, firsts: Sequence[int], alpha: float | Sequence[float] = 0.5,
                        beta: float | Sequence[float] = 0.5) -> list[dict[str, Any]]:
    """Merge decoder pairs ``(f, f + 1)`` for every ``f`` in ``firsts`` (current positions, disjoint pairs).

    ``alpha``/``beta`` are one value for every pair or one per pair (in ascending order of ``firsts``).
    Pairs are merged from the last to the first so earlier positions stay valid. Returns one record per
    merged pair: ``first`` (position before merging), ``position`` (position after all merges), ``origin``
    (original layer indices the merged layer stands for), ``alpha``, ``beta``.
    """
    order = sorted(int(f) for f in firsts)
    if any(b - a < 2 for a, b in zip(order, order[1:], strict=False)):
        raise SurgeryError(f"decoder: pairs starting at {order} overlap")
    alphas, betas = _per_pair(alpha, len(order), "alpha"), _per_pair(beta, len(order), "beta")
    for f, a, b in sorted(zip(order, alphas, betas, strict=True), reverse=True):
        merge_layers(model, "decoder", f, a, b)
    layers = structure_of(model)["stacks"]["decoder"]["layers"]
    return [{"first": f, "position": f - j, "origin": layers[f - j]["origin"], "alpha": a, "beta": b}
            for j, (f, a, b) in enumerate(zip(order, alphas, betas, strict=True))]


def merge_most_similar(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], n_pairs: int,
                       similarity: str = "output", alpha: float | Sequence[float] = 0.5,
                       beta: float | Sequence[float] = 0.5, pairs: Sequence[int] | None = None
                       ) -> dict[str, Any]:
    """Measure pair similarity on ``batches``, choose ``n_pairs`` pairs by ``similarity`` (or take the given
    ``pairs``: first indices), merge them. Returns ``{"similarity": [...], "merged": [...], "criterion"}``."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    records = pair_similarity(model, batches)
    firsts = list(pairs) if pairs is not None else choose_pairs([r[f"{similarity}_cos"] for r in records],
                                                                n_pairs)
    merged = merge_decoder_pairs(model, firsts, alpha, beta)
    return {"criterion": similarity if pairs is None else "given", "similarity": records, "merged": merged}
