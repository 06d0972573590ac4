"""Timing helpers: sample counts, interleaving, summaries, runtime record, forced greedy decoding."""

import copy

import torch

from asrcompress.measure.latency import (
    interleaved_timings,
    rtf,
    rtfx,
    runtime_info,
    set_threads,
    summarize,
    time_callable,
    whisper_greedy_decode,
)


def test_time_callable_counts_warmup_and_repeats():
    calls = []
    out = time_callable(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(out) == 3 and len(calls) == 5 and all(t >= 0 for t in out)


def test_interleaved_timings_samples_and_order():
    log: list[str] = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    out = interleaved_timings(fns, warmup=1, repeats=20, seed=0)
    assert {k: len(v) for k, v in out.items()} == {"a": 20, "b": 20, "c": 20}
    assert len(log) == 3 * 21
    rounds = [tuple(log[i:i + 3]) for i in range(3, len(log), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every variant once per round
    assert len(set(rounds)) > 1  # the order is shuffled between rounds
    assert interleaved_timings(fns, 0, 5, seed=7).keys() == fns.keys()
    log.clear()  # a name the caller has already warmed up skips one warm-up round, not its timings
    out = interleaved_timings(fns, warmup=2, repeats=3, seed=0, warmed=["b"])
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}
    assert log[:5] == ["a", "c", "a", "b", "c"] and log.count("b") == 1 + 3


def test_summary_and_real_time_factors():
    s = summarize([0.010, 0.020, 0.030, 0.040], prefix="latency_encoder")
    assert s["latency_encoder_ms_p50"] == 25.0 and s["latency_encoder_ms_min"] == 10.0
    assert s["latency_encoder_n"] == 4 and "latency_encoder_ms_p90" in s
    assert rtfx(2.0, 30.0) == 15.0 and rtf(2.0, 30.0) == 2.0 / 30.0


def test_runtime_info_records_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        info = runtime_info()
        assert info["num_threads"] == 1
        assert info["cpu_model"] and info["torch_version"] == torch.__version__
    finally:
        torch.set_num_threads(before)


def test_forced_greedy_decode_length(tiny_whisper, whisper_features):
    out = whisper_greedy_decode(tiny_whisper, whisper_features, n_tokens=7)
    assert out.shape == (2, 8) and (out[:, 0] == tiny_whisper.config.decoder_start_token_id).all()
    with torch.inference_mode():  # same tokens as an uncached greedy pass
        ids = out[:, :1]
        for _ in range(7):
            logits = tiny_whisper(input_features=whisper_features, decoder_input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(ids, out)


def test_time_real_keys_on_tiny_models(tiny_whisper):
    from conftest import make_tiny_ctc

    from asrcompress.measure.real_scale import time_real

    w = time_real({"a": tiny_whisper, "b": tiny_whisper}, n_tokens=3, warmup=0, repeats=2)
    assert w["a"]["latency_encoder_n"] == 2 and w["b"]["latency_decoder_token_n"] == 2
    assert w["a"]["rtfx_30s"] > 0 and w["a"]["decode_tokens"] == 3
    # same encoder architecture: timed once and shared, so the encoder ratio is exactly 1
    assert w["b"]["encoder_timed_with"] == "a" and w["a"]["encoder_timed_with"] == "a"
    assert w["b"]["latency_encoder_ms_p50"] == w["a"]["latency_encoder_ms_p50"]
    from asrcompress.compress.surgery import prune_ffn_neurons

    smaller = copy.deepcopy(tiny_whisper)
    prune_ffn_neurons(smaller, "encoder", 0, [0, 1])
    w2 = time_real({"a": tiny_whisper, "b": smaller}, n_tokens=2, warmup=0, repeats=1)
    assert w2["b"]["encoder_timed_with"] == "b"  # a different encoder is timed on its own
    c = time_real({"x": make_tiny_ctc("hubert")}, ctc_seconds=0.5, warmup=0, repeats=2)
    assert c["x"]["latency_forward_n"] == 2 and c["x"]["rtfx"] > 0 and c["x"]["audio_s"] == 0.5
