"""Paper 4's stage compresses and saves only (issue 16): every variant reloads as a model with its
processor, the stage writes its traces and compression-side facts, and no score (WER, p-values,
parameter counts: the measure stage's figures); the paper profile scores LibriSpeech test-clean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_stage
from datasets import Dataset, DatasetDict

from asrcompress.compress.checkpoint import load_compressed, read_compression_record
from asrcompress.config import get, load_params
from asrcompress.measure.suite import load_variant
from asrcompress.models.ctc import build_model, build_processor, build_vocab, save_pretrained
from asrcompress.report.figures import plot_p4_compression

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the strange dog", "call 42 now", "a quick brown fox", "our dog"]


def test_p4_compress_saves_every_variant_and_scores_nothing(tmp_path: Path, monkeypatch) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    p4 = params["p4"]
    p4["compress_train"].update(max_steps=2, batch_size=2, warmup_steps=0, checkpoint_every=2)
    p4["gates"]["log_every"] = 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "smoke", "seed": 1, "p4": p4,
                                                          "corpora": params["corpora"]}))
    proc = build_processor(build_vocab(TEXTS))
    dims = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, spec_augment=False)
    save_pretrained(build_model("wav2vec2", "scratch", proc, dims), proc, tmp_path / "dense")
    rng = np.random.default_rng(0)
    rows = [{"id": f"u{i}", "text": TEXTS[i % 4], "duration": 0.5,
             "audio": {"array": (0.1 * rng.standard_normal(8000)).astype(np.float32).tolist(),
                       "sampling_rate": 16000}} for i in range(4)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "corpus"))

    load_stage("p4_compress").main("wav2vec2", "dense", "corpus", "out", "rep/wav2vec2", "m.json")

    for name in ("control", "gates", "structured", "ump"):
        model, processor = load_variant(tmp_path / "out" / name)  # what measure@ loads
        assert model.config.model_type == "wav2vec2" and len(processor.tokenizer) == len(proc.tokenizer)
        assert read_compression_record(tmp_path / "out" / name)["method"] == f"p4_{name}"
    metrics = json.loads((tmp_path / "m.json").read_text())
    scores = [k for k in metrics if any(s in k for s in ("wer", "cer", "p_value", "params", "checkpoint_bytes"))]
    assert scores == []  # scored by measure@ / compare@ only
    assert {"gates_compress_seconds", "ump_compress_seconds", "compression_time_reduction_pct",
            "gates_gated_sparsity_pct", "gates_csr_weights_bytes", "structured_ffn_neurons_removed"} <= set(metrics)
    assert metrics["ump_gated_sparsity_pct"] == pytest.approx(metrics["gates_gated_sparsity_pct"], abs=0.1)
    structured = load_compressed(tmp_path / "out" / "structured")
    assert structured.config.model_type == "wav2vec2"
    for csv in ("thresholds", "sparsity_trace", "layers", "structured", "gates_loss", "ump_loss", "control_loss"):
        assert (tmp_path / "rep" / "wav2vec2" / f"{csv}.csv").read_text().count("\n") >= 2, csv
    assert not list(tmp_path.rglob("*.png"))  # figures are drawn by the report, from these traces
    figs = plot_p4_compression(tmp_path / "rep" / "wav2vec2", tmp_path / "fig")
    assert [f.name for f in figs] == ["p4_wav2vec2_layer_sparsity.png", "p4_wav2vec2_thresholds.png"]
    assert all(f.stat().st_size > 1000 for f in figs)


def test_paper_profile_scores_paper4_on_librispeech_test_clean() -> None:
    """Defect 4: p4's corpus mapped to librispeech_other (test-other) while the paper and the table
    rows say test-clean."""
    paper = load_params(ROOT / "params.yaml", profile="paper")
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    for key in paper["p4"]["models"]:
        corpus = get(paper, f"p4.models.{key}.corpus", str)
        assert get(paper, f"corpora.{corpus}.source", str) == "librispeech_clean", key
        assert smoke["p4"]["models"][key]["corpus"] == corpus  # dvc.yaml's deps come from the top level
    rows = yaml.safe_load((ROOT / "reports/reported/p4.yaml").read_text())["rows"]
    assert all(r["setting"].get("split", "test-clean") == "test-clean" for r in rows)
    for section in ("dense", "variants"):  # every p4 measurement scores the p4 corpus
        for key, entry in (smoke.get(section) or {}).items():
            if key.startswith("p4_"):
                assert entry["corpus"] == smoke["p4"]["models"][key.split("_")[1]]["corpus"], key
    assert paper["corpora"]["en"]["source"] == "librispeech_other"  # paper 3 keeps test-other
