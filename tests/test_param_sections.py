"""Issue 17 items 3 and 5: every section a shared (non-paper) stage reads, and every training section,
is checked before any work; the error names ``section.key``.

Each case writes a scratch params.yaml with one mistyped, missing, wrong-typed or out-of-range key,
runs the stage's ``main`` from that directory, and expects a ParamError naming the key. The stage's
arguments point at directories that do not exist: a stage that did any work before checking would
fail on them with another error instead (or, for ``prepare``, synthesise a corpus).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import load_stage

from asrcompress.config import ParamError, check_whisper, load_params
from asrcompress.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DELETE = object()
BASE_TRAIN = {"max_steps": 3, "batch_size": 2, "lr": 0.1}


# ------------------------------------------------------------------------------ training sections
@pytest.mark.parametrize(("key", "value", "message"), [
    ("checkpoint_every", 0, r"p1\.sgl_train\.checkpoint_every: must be >= 1, got 0"),  # crashed after step 1
    ("checkpoint_every", -5, r"p1\.sgl_train\.checkpoint_every: must be >= 1"),
    ("grad_clip", math.nan, r"p1\.sgl_train\.grad_clip: must be a finite number, got nan"),  # was: no clipping
    ("grad_clip", math.inf, r"p1\.sgl_train\.grad_clip: must be a finite number"),
    ("grad_clip", -1.0, r"p1\.sgl_train\.grad_clip: must be >= 0"),
    ("lr", math.nan, r"p1\.sgl_train\.lr: must be a finite number"),
    ("lr", 0.0, r"p1\.sgl_train\.lr: must be > 0"),
    ("lr", "fast", r"p1\.sgl_train\.lr: must be float, got str"),
    ("max_steps", 0, r"p1\.sgl_train\.max_steps: must be >= 1"),
    ("max_steps", 2.5, r"p1\.sgl_train\.max_steps: must be int, got float"),
    ("max_steps", DELETE, r"missing key 'p1\.sgl_train\.max_steps'"),
    ("warmup_steps", -1, r"p1\.sgl_train\.warmup_steps: must be >= 0"),
    ("weight_decay", math.nan, r"p1\.sgl_train\.weight_decay: must be a finite number"),
    ("num_threads", 0, r"p1\.sgl_train\.num_threads: must be >= 1"),
    ("grad_accum_steps", 0, r"p1\.sgl_train\.grad_accum_steps: must be >= 1"),
    ("mixed_precision", "fp8", r"p1\.sgl_train\.mixed_precision: 'fp8' is not one of"),
    ("deterministic", "yes", r"p1\.sgl_train\.deterministic: must be bool"),
    ("learning_rate", 0.1, r"p1\.sgl_train\.learning_rate: unknown key"),
])
def test_training_section_errors_name_section_and_key(key: str, value: Any, message: str) -> None:
    section = dict(BASE_TRAIN)
    if value is DELETE:
        del section[key]
    else:
        section[key] = value
    with pytest.raises(ParamError, match=message):
        TrainConfig.from_params(section, 0, name="p1.sgl_train")


def test_train_config_built_in_code_refuses_the_same_values() -> None:
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        TrainConfig(max_steps=3, batch_size=2, lr=0.1, checkpoint_every=0)
    with pytest.raises(ValueError, match="grad_clip finite"):
        TrainConfig(max_steps=3, batch_size=2, lr=0.1, grad_clip=math.nan)
    assert TrainConfig(max_steps=3, batch_size=2, lr=0.1, grad_clip=0.0).grad_clip == 0.0  # 0 = off, on purpose


def _training_sections(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ("pretrain", "train", "p1.sgl_train", "p1.recovery_train", "p1.control_train", "p1.imp_train",
                 "p2.train", "p4.train", "p4.compress_train"):
        node: Any = cfg
        for part in name.split("."):
            node = node[part]
        if node is not None:
            found[name] = node
    return found


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_every_committed_training_section_validates(profile: str) -> None:
    sections = _training_sections(load_params(ROOT / "params.yaml", profile=profile))
    assert len(sections) == 9
    for name, section in sections.items():
        assert TrainConfig.from_params(section, 0, name=name).checkpoint_every >= 1


# ------------------------------------------------------------------------------ stages
def _write_params(tmp_path: Path, edits: dict[str, Any]) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["corpora"]["en"]["sizes"] = {"train": 2, "dev": 1, "test": 1}  # old code that did not check stays cheap
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


STAGE_CASES = [
    # prepare@en
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.normalizer": "englsh"}, r"corpora\.en\.normalizer: 'englsh'"),
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.langauge": "en"}, r"corpora\.en\.langauge: unknown key"),
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.language": 7}, r"corpora\.en\.language: must be str"),
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.source": "librispeach"}, r"corpora\.en\.source: 'librispeach'"),
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.sizes.test": DELETE}, r"missing key 'corpora\.en\.sizes\.test'"),
    ("prepare", ["en", "out", "stats.json"], {"corpora.en.sizes.train": -3}, r"corpora\.en\.sizes\.train: must be >= "),
    ("prepare", ["en", "out", "stats.json"], {"synth.snr_db": "high"}, r"synth\.snr_db: must be float"),
    ("prepare", ["en", "out", "stats.json"], {"synth.pitch": [70, 30]}, r"synth\.pitch: must be \[low, high\]"),
    ("prepare", ["en", "out", "stats.json"], {"synth.noise_prob": 1.5}, r"synth\.noise_prob: must be <= 1"),
    ("prepare", ["en", "out", "stats.json"], {"whisper.chunk_length_s": 0}, r"whisper\.chunk_length_s: must be >= 1"),
    ("prepare", ["fr", "out", "stats.json"], {}, r"missing key 'corpora\.fr'"),
    # tokenizer
    ("tokenizer", ["out", "nowhere"], {"tokenizer.vocab_size": "1000"}, r"tokenizer\.vocab_size: must be int"),
    ("tokenizer", ["out", "nowhere"], {"tokenizer.vocab_size": 10}, r"tokenizer\.vocab_size: must be >= 300"),
    ("tokenizer", ["out", "nowhere"], {"whisper.attn_implementation": "spda"},
     r"whisper\.attn_implementation: 'spda' is not one of"),
    # pretrain (from scratch)
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"pretrain.checkpoint_every": 0},
     r"pretrain\.checkpoint_every: must be >= 1"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"pretrain.grad_clip": math.nan},
     r"pretrain\.grad_clip: must be a finite number"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"pretrain_ctc.weight": -1},
     r"pretrain_ctc\.weight: must be >= 0"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"pretrain_ctc.frame_strides": 2},
     r"pretrain_ctc\.frame_strides: unknown key \(did you mean 'frame_stride'\?\)"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"whisper.dims.attention_heads": 3},
     r"whisper\.dims\.attention_heads: 3 does not divide"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"whisper.dims.d_modl": 128},
     r"whisper\.dims\.d_modl: unknown key"),
    ("pretrain", ["proc", "out", "loss.csv", "m.json", "c"], {"corpora.hi.whisper_language": None},
     r"corpora\.hi\.whisper_language: must be str"),
    # finetune@whisper_en
    ("finetune", ["whisper_en", "c", "base", "out", "loss.csv", "m.json"], {"train.lr": "fast"},
     r"train\.lr: must be float, got str"),
    ("finetune", ["whisper_en", "c", "base", "out", "loss.csv", "m.json"], {"train.max_step": 3},
     r"train\.max_step: unknown key \(did you mean 'max_steps'\?\)"),
    ("finetune", ["whisper_en", "c", "base", "out", "loss.csv", "m.json"], {"train.checkpoint_every": 0},
     r"train\.checkpoint_every: must be >= 1"),
    ("finetune", ["whisper_en", "c", "base", "out", "loss.csv", "m.json"], {"models.whisper_en.corpus": "fr"},
     r"models\.whisper_en\.corpus: 'fr' is not a key of corpora"),
    # prepare_real@en_real, real_model@whisper_base
    ("prepare_real", ["en_real", "out", "stats.json"], {"real_corpora.en_real.speaker_from_id": "dot"},
     r"real_corpora\.en_real\.speaker_from_id: 'dot' is not one of"),
    ("prepare_real", ["en_real", "out", "stats.json"], {"real_corpora.en_real.max_items": 0},
     r"real_corpora\.en_real\.max_items: must be >= 1"),
    ("prepare_real", ["en_real", "out", "stats.json"], {"real_corpora.en_real.splits": [0.8, 0.2]},
     r"real_corpora\.en_real\.splits: must be dict"),
    ("real_model", ["whisper_base", "out", "rec.json"], {"real_models.whisper_base.sha256": "abc"},
     r"real_models\.whisper_base\.sha256: 'abc' is not 64 lower-case hex digits"),
    ("real_model", ["whisper_base", "out", "rec.json"], {"real_models.whisper_base.meta_dir": DELETE},
     r"missing key 'real_models\.whisper_base\.meta_dir'"),
    # report
    ("report", ["p1"], {"variants": ["sgl_pruned_hi"]}, r"key 'variants' must be dict/NoneType, got list"),
    ("report", ["p9"], {}, r"no reports/reported/<paper>\.yaml for \['p9'\]"),
]


@pytest.mark.parametrize(("stage", "argv", "edits", "message"), STAGE_CASES,
                         ids=[f"{c[0]}-{next(iter(c[2]), c[1][0])}" for c in STAGE_CASES])
def test_stage_names_the_bad_key_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str,
                                                argv: list[str], edits: dict[str, Any], message: str) -> None:
    _write_params(tmp_path, edits)
    if stage == "report":
        (tmp_path / "reports" / "reported").mkdir(parents=True)
        (tmp_path / "reports" / "reported" / "p1.yaml").write_text("{}\n")
    module = load_stage(stage)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamError, match=message):
        module.main(*argv)
    assert not (tmp_path / "out").exists()


def test_whisper_dims_needed_only_from_scratch() -> None:
    cfg = load_params(ROOT / "params.yaml", profile="paper")
    del cfg["whisper"]["dims"]
    assert check_whisper(cfg)["source"] == "openai/whisper-small"
    cfg["whisper"]["source"] = "scratch"
    with pytest.raises(ParamError, match=r"missing key 'whisper\.dims'"):
        check_whisper(cfg)
