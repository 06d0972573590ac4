"""Paper 3, issue 16: the sensitivity scores decide the pruning ratios; one measurement path; a "near 0"
claim judged by the paired test and its CI."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import OFFLINE_DIMS, load_stage, make_offline_rows, make_tiny_whisper, sensitivity_records

from asrcompress.compress.allocation import AllocationRule, allocate, allocation_units
from asrcompress.compress.components import prunable_filter
from asrcompress.compress.magnitude import count_pruned
from asrcompress.compress.p3_oneshot import plan_points, point_masks, prunable_numel
from asrcompress.config import ParamError
from asrcompress.report.tables import compare_row

ROOT = Path(__file__).resolve().parents[1]
LAYERED = ("enc_self_attn", "enc_ffn", "dec_self_attn", "dec_cross_attn", "dec_ffn")


def records(seed: int = 0, n_layers: int = 4, tied: bool = True) -> list[dict]:
    """Synthetic p3_sensitivity records: random sizes and per-parameter scores spanning 3 decades."""
    rng = np.random.default_rng(seed)
    out = [{"component": "conv", "layer": i, "n_params": int(rng.integers(100, 1000))} for i in (0, 1)]
    out += [{"component": c, "layer": layer, "n_params": int(rng.integers(100, 5000))}
            for c in LAYERED for layer in range(n_layers)]
    emb = int(rng.integers(1000, 5000))
    out += [{"component": c, "layer": None, "n_params": emb} for c in ("token_embedding", "output_projection")]
    for r in out:
        r["score_fisher"] = float(10 ** rng.uniform(-3, 0)) * r["n_params"]
        r["score_grad"] = float(10 ** rng.uniform(-3, 0)) * r["n_params"]
    return out


# ---------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("target", [0.05, 0.2, 0.4, 0.6, 0.79])
@pytest.mark.parametrize("score", ["fisher", "gradient"])
def test_allocation_hits_the_target_and_prunes_the_less_sensitive_more(target, score):
    rule = AllocationRule(score=score, max_ratio=0.8)
    alloc = allocate(records(), target, rule)
    n = sum(u["n_params"] for u in alloc.units)
    assert sum(u["ratio"] * u["n_params"] for u in alloc.units) / n == pytest.approx(target, abs=1e-9)
    assert alloc.sparsity == pytest.approx(target, abs=1e-9)
    by_score = sorted(alloc.units, key=lambda u: u["score_per_param"])
    ratios = [u["ratio"] for u in by_score]
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))  # monotone: more sensitive, pruned less
    assert len(set(ratios)) > 2 and all(0.0 <= r <= 0.8 for r in ratios)
    # the output is what tensor_ratios reads: per layer for layered components, one ratio for the others
    assert set(alloc.per_layer) == set(LAYERED) and all(len(v) == 4 for v in alloc.per_layer.values())
    assert alloc.ratios["token_embedding"] == alloc.ratios["output_projection"]  # tied: one unit, one ratio


def test_allocation_units_merge_conv_and_the_tied_embedding_and_count_it_once():
    recs = records()
    units = allocation_units(recs, "fisher", True, tied_embedding=True)
    emb = [u for u in units if "token_embedding" in u["components"]]
    assert len(emb) == 1 and emb[0]["components"] == ["token_embedding", "output_projection"]
    assert emb[0]["n_params"] == recs[-1]["n_params"]  # the one tensor, not its two uses
    assert emb[0]["score"] == pytest.approx(recs[-1]["score_fisher"] + recs[-2]["score_fisher"])
    conv = [u for u in units if u["components"] == ["conv"]]
    assert len(conv) == 1 and conv[0]["n_params"] == recs[0]["n_params"] + recs[1]["n_params"]
    assert len(allocation_units(recs, "fisher", True, tied_embedding=False)) == len(units) + 1
    assert len(allocation_units(recs, "fisher", False, tied_embedding=True)) == 1 + len(LAYERED) + 1


def test_allocation_changes_with_the_scores():
    recs = records()
    a = allocate(recs, 0.4)
    swapped = [dict(r) for r in recs]  # swap the scores of the encoder FFN and the decoder FFN, layer 0
    i = next(k for k, r in enumerate(recs) if (r["component"], r["layer"]) == ("enc_ffn", 0))
    j = next(k for k, r in enumerate(recs) if (r["component"], r["layer"]) == ("dec_ffn", 0))
    pi, pj = recs[i]["score_fisher"] / recs[i]["n_params"], recs[j]["score_fisher"] / recs[j]["n_params"]
    swapped[i]["score_fisher"], swapped[j]["score_fisher"] = pj * recs[i]["n_params"], pi * recs[j]["n_params"]
    b = allocate(swapped, 0.4)
    before = a.per_layer["enc_ffn"][0] - a.per_layer["dec_ffn"][0]
    after = b.per_layer["enc_ffn"][0] - b.per_layer["dec_ffn"][0]
    assert before != 0 and after != 0 and np.sign(before) != np.sign(after)  # the order follows the scores
    assert b.sparsity == pytest.approx(0.4, abs=1e-9)
    # gradient and Fisher rank differently, so they allocate differently
    assert allocate(recs, 0.4, AllocationRule(score="gradient")).per_layer != a.per_layer


def test_allocation_edges():
    recs = records()
    uniform = allocate(recs, 0.3, AllocationRule(power=0.0))
    assert all(u["ratio"] == pytest.approx(0.3) for u in uniform.units)
    recs[2]["score_fisher"] = 0.0  # a component the loss never sees: pruned at the cap
    assert allocate(recs, 0.3, AllocationRule(max_ratio=0.7)).per_layer["enc_self_attn"][0] == 0.7
    with pytest.raises(ValueError, match=r"p3\.compare_sparsities: sparsity 0\.9 is outside"):
        allocate(recs, 0.9, AllocationRule(max_ratio=0.8))
    with pytest.raises(ValueError, match=r"p3\.allocation\.score"):
        AllocationRule(score="hessian")
    with pytest.raises(ValueError, match="min_ratio"):
        AllocationRule(min_ratio=0.5, max_ratio=0.4)
    floor = allocate(records(), 0.4, AllocationRule(min_ratio=0.1))
    assert min(u["ratio"] for u in floor.units) >= 0.1


def test_sensitivity_point_prunes_by_the_scores_at_the_target_sparsity():
    model = make_tiny_whisper()
    n, n_tensors = prunable_numel(model), sum(1 for nm, p in model.named_parameters() if prunable_filter(model)(nm, p))
    masks = {}
    for seed in (0, 1):
        points = plan_points(model, dec_self_attn_ratios=[], last_encoder_ratio=None, compare_sparsities=[0.4],
                             sensitivity=sensitivity_records(model, seed), baselines=[])
        (sens,) = [p for p in points if p.method == "sensitivity"]
        masks[seed] = point_masks(model, sens, {})
        assert abs(count_pruned(masks[seed]) - 0.4 * n) <= n_tensors  # per-tensor rounding only
    assert any(not torch.equal(masks[0][k], masks[1][k]) for k in masks[0])  # other scores, other masks
    with pytest.raises(ValueError, match="measured on another model"):
        plan_points(make_tiny_whisper(decoder_layers=3), dec_self_attn_ratios=[], last_encoder_ratio=None,
                    sensitivity=sensitivity_records(model), baselines=[])


# ---------------------------------------------------------------------------------------------- the stage
def _stage_inputs(tmp_path: Path, offline_processor) -> None:
    from datasets import Dataset, DatasetDict

    from asrcompress.models.whisper import build_model

    model = build_model({**OFFLINE_DIMS, "encoder_layers": 2, "decoder_layers": 2}, offline_processor.tokenizer,
                        1, "eager")
    model.save_pretrained(tmp_path / "model")
    offline_processor.save_pretrained(tmp_path / "model")
    rows = [{**r, "audio": {"array": r["audio"]["array"].tolist(), "sampling_rate": 16000}}
            for r in make_offline_rows(6)]
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "corpus"))
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["profile"] = "smoke"
    cfg["p3"].update({"source": None, "calibration_fraction": 0.34, "dec_self_attn_sweep": [],
                      "last_encoder": {"ratio": None, "n_layers": None, "components": ["enc_ffn"]},
                      "compare_sparsities": [0.4], "baselines": [], "batch_size": 4, "max_new_tokens": 3,
                      "bootstrap_resamples": 20, "num_threads": 1, "device": "cpu"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    for seed in (0, 1):
        (tmp_path / f"sens{seed}.json").write_text(json.dumps({"per_layer": sensitivity_records(model, seed)}))


def test_p3_prune_reads_the_sensitivity_file(tmp_path, monkeypatch, offline_processor):
    """p3_prune's output depends on p3_sensitivity's scores (before: the paper's ratios only)."""
    _stage_inputs(tmp_path, offline_processor)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASRC_PROFILE", raising=False)
    stage = load_stage("p3_prune")
    out = {}
    for seed in (0, 1):
        d = tmp_path / f"out{seed}"
        stage.main("model", "corpus", f"sens{seed}.json", str(d / "s.csv"), str(d / "s.json"), str(d / "h.jsonl"),
                   str(d / "p.png"), str(d / "m.json"))
        out[seed] = json.loads((d / "s.json").read_text())
    assert [p["point"] for p in out[0]["points"]] == ["dense", "sensitivity_s40", "paper_s40"]
    sens = [o["ratios"]["sensitivity_s40"] for o in (out[0], out[1])]
    assert sens[0] != sens[1]  # other scores, other allocation
    assert out[0]["ratios"]["paper_s40"] == out[1]["ratios"]["paper_s40"]  # the fixed ratios do not move
    comp = [o["points"][1]["component_sparsity_pct"] for o in (out[0], out[1])]
    assert comp[0] != comp[1]
    assert out[0]["points"][1]["prunable_sparsity_pct"] == pytest.approx(40.0, abs=0.1)


def test_p3_prune_declares_the_sensitivity_file_as_a_dependency():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["p3_prune"]
    assert "reports/p3/sensitivity.json" in stage["deps"]
    assert "reports/p3/sensitivity.json" in stage["cmd"].split()


# ---------------------------------------------------------------------------------------------- layering
def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_compress_never_imports_measure():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("asrcompress.measure"))
                 for p in sorted((ROOT / "src/asrcompress/compress").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


# ---------------------------------------------------------------------------------------------- near 0
ROW = {"id": "sens_40", "source": "abstract", "setting": {"model": "whisper-small"}, "quantity": "WER change",
       "kind": "qualitative", "reported": "near 0",
       "ours": {"metrics": "reports/metrics/p3_prune.json", "key": "s_delta"},
       "check": {"near_zero": {"ci_low": "s_lo", "ci_high": "s_hi", "p_worse": "s_p", "tolerance": 1.0,
                               "alpha": 0.05}}}


@pytest.mark.parametrize(("delta", "lo", "hi", "p", "status"), [
    (1.52, 0.56, 2.57, 0.004, "differs"),   # the committed smoke figure: +1.5 points, p = 0.004
    (0.10, -0.50, 0.70, 0.40, "matches"),   # no significant degradation, CI inside +/- 1
    (0.30, -0.40, 1.60, 0.20, "differs"),   # not significant, but the CI reaches beyond 1 point
    (0.60, 0.10, 0.95, 0.01, "differs"),    # inside the band, but a significant degradation
    (-0.80, -1.50, -0.20, 1.00, "differs"),  # a clear improvement is not "near 0" either
])
def test_near_zero_claim_needs_the_paired_test_and_the_ci(delta, lo, hi, p, status):
    figures = {"s_delta": delta, "s_lo": lo, "s_hi": hi, "s_p": p}
    out = compare_row(ROW, delta, None, "smoke", figures=figures)
    assert out["status"] == status
    assert "p(worse)" in out["note"] and "95 % CI" in out["note"]
    missing = compare_row(ROW, delta, None, "smoke", figures={"s_delta": delta})
    assert missing["status"].startswith("not run (no 's_lo'")


def test_p3_reported_near_zero_rows_use_the_paired_rule():
    rows = {r["id"]: r for r in yaml.safe_load((ROOT / "reports/reported/p3.yaml").read_text())["rows"]}
    for rid in ("sens_40", "sens_40_paper_ratios"):
        assert set(rows[rid]["check"]) == {"near_zero"}, rid


def test_committed_style_sens_40_figure_no_longer_matches(tmp_path):
    """The smoke run's +1.5 points with p = 0.004 was "matches" under the old 5-point margin."""
    import shutil

    from asrcompress.report.tables import build_table

    shutil.copytree(ROOT / "reports/reported", tmp_path / "reports/reported")
    (tmp_path / "reports/metrics").mkdir()
    figures = {f"{k}_{s}": v for k in ("component_x100", "sensitivity_s40", "paper_s40")
               for s, v in (("delta_wer_pct", 1.52), ("delta_ci_low_pct", 0.56), ("delta_ci_high_pct", 2.57),
                            ("p_value_worse", 0.004))}
    (tmp_path / "reports/metrics/p3_prune.json").write_text(json.dumps(figures))
    _, rows = build_table(tmp_path / "reports/reported/p3.yaml", tmp_path, "smoke")
    status = {r["id"]: r["status"] for r in rows}
    assert status["sens_40"] == "differs" and status["sens_40_paper_ratios"] == "differs"


def test_p3_data_calibrates_on_another_corpus_and_evaluates_the_whole_test_split(tmp_path, monkeypatch):
    """``p3_real``: the sensitivity never sees test audio (calibration_corpus's train split); the whole
    test split is evaluated; language and normaliser come from ``<section>.corpus`` (a real_corpora key)."""
    from datasets import Dataset, DatasetDict

    from asrcompress.compress.p3_oneshot import p3_data

    rows = [{**r, "audio": {"array": r["audio"]["array"].tolist(), "sampling_rate": 16000}}
            for r in make_offline_rows(6)]
    test_rows = [{**r, "id": f"t{i}"} for i, r in enumerate(rows)]
    train_rows = [{**r, "id": f"c{i}"} for i, r in enumerate(rows)]
    DatasetDict({"test": Dataset.from_list(test_rows)}).save_to_disk(str(tmp_path / "real"))
    (tmp_path / "data/corpora").mkdir(parents=True)
    DatasetDict({"train": Dataset.from_list(train_rows)}).save_to_disk(str(tmp_path / "data/corpora/syn"))
    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())["p3_real"]
    cfg = {"real_corpora": {"r": {"whisper_language": "en", "normalizer": "english"}},
           "sec": {**base, "corpus": "r", "calibration_corpus": "syn", "n_grad": 4, "n_fisher": 2,
                   "calibration_fraction": 0.5}}
    data = p3_data(cfg, "sec", "real")
    assert (data.language, data.normalizer) == ("en", "english")
    assert [r["id"] for r in data.calibration] == ["c0", "c1", "c2", "c3"]  # max(n_grad, n_fisher) train rows
    assert [r["id"] for r in data.evaluation] == [f"t{i}" for i in range(6)]  # every test utterance
    del cfg["sec"]["calibration_corpus"]  # the paper code's protocol: the head of the test split
    data = p3_data(cfg, "sec", "real")
    assert [r["id"] for r in data.calibration] == ["t0", "t1", "t2"]
    assert [r["id"] for r in data.evaluation] == ["t3", "t4", "t5"]
    # p3r_prune@<key>: another corpus scored, cut to its test_utterances; the calibration is unchanged
    cfg["sec"]["calibration_corpus"] = "syn"
    cfg["corpora"] = {"s": {"whisper_language": "hi", "normalizer": "hindi"}}
    cfg["sec"]["evaluate"] = {"r": {"test_utterances": None}, "s": {"test_utterances": 2}}
    data = p3_data(cfg, "sec", "real", "s")
    assert (data.language, data.normalizer) == ("hi", "hindi")
    assert [r["id"] for r in data.evaluation] == ["t0", "t1"]
    assert [r["id"] for r in data.calibration] == ["c0", "c1", "c2", "c3"]
    assert len(p3_data(cfg, "sec", "real", "r").evaluation) == 6
    with pytest.raises(ParamError, match=r"sec\.evaluate: no entry 'x'"):
        p3_data(cfg, "sec", "real", "x")
    cfg["sec"]["evaluate"]["s"]["test_utterances"] = 0
    with pytest.raises(ParamError, match=r"sec\.evaluate\.s\.test_utterances: must be >= 1, got 0"):
        p3_data(cfg, "sec", "real", "s")


@pytest.mark.parametrize("section", ["p3", "p3_real"])
def test_the_committed_p3_sections_pass_their_schema(section):
    from asrcompress.compress.p3_oneshot import check_p3_section

    cfg = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    assert check_p3_section(cfg, section)["n_grad"] >= 1


@pytest.mark.parametrize(("key", "value", "message"), [
    ("n_gradd", 5, r"p3_real\.n_gradd: unknown key \(did you mean 'n_grad'\?\)"),
    ("n_fisher", 0, r"p3_real\.n_fisher: must be >= 1, got 0"),
    ("compare_sparsities", [0.4, 1.2], r"p3_real\.compare_sparsities\[1\]: must be a number in \(0, 1\)"),
    ("dec_self_attn_sweep", [0.1, "half"], r"p3_real\.dec_self_attn_sweep\[1\]"),
    ("ratios", {"enc_ffn": 0.5, "enc_fnn": 0.2}, r"p3_real\.ratios: unknown component\(s\) \['enc_fnn'\]"),
    ("baselines", ["global", "random"], r"p3_real\.baselines\[1\]: 'random' is not one of"),
    ("allocation", {"score": "hessian", "by_layer": True, "min_ratio": 0.0, "max_ratio": 0.8, "power": 1.0},
     r"p3_real\.allocation\.score: 'hessian' is not one of"),
    ("allocation", {"score": "fisher", "by_layer": True, "min_ratio": 0.5, "max_ratio": 0.2, "power": 1.0},
     r"p3_real\.allocation: needs 0 <= min_ratio <= max_ratio <= 1"),
    ("last_encoder", {"ratio": 0.5, "n_layer": 2, "components": []}, r"p3_real\.last_encoder\.n_layer: unknown key"),
    ("device", "gpu", r"p3_real\.device: 'gpu' is not cpu, cuda or cuda:N"),
    ("calibration_fraction", 1.0, r"p3_real\.calibration_fraction: must be < 1"),
    ("batch_size", float("nan"), r"p3_real\.batch_size: must be int"),
])
def test_a_bad_p3_key_is_named_before_any_work(key, value, message):
    from asrcompress.compress.p3_oneshot import p3_data

    cfg = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    cfg["p3_real"][key] = value
    with pytest.raises(ParamError, match=message):
        p3_data(cfg, "p3_real", "/nonexistent/corpus")  # raises before reading any data
