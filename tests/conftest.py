"""Shared fixtures: tiny random-weight models built from configs (no hub, no files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    GenerationConfig,
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

TINY_WHISPER = dict(
    vocab_size=300, d_model=64, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
    num_mel_bins=80, max_source_positions=50, max_target_positions=64,
    decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    suppress_tokens=[], begin_suppress_tokens=None,
)

# the fast conv front-end measured in shared/OFFLINE_NOTES.md
TINY_CTC = dict(
    vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    feat_extract_norm="group", conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 4),
    conv_kernel=(10, 8, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ctc_zero_infinity=True, pad_token_id=0, do_stable_layer_norm=False,
)


def make_tiny_whisper(seed: int = 0, **overrides) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = WhisperConfig(**{**TINY_WHISPER, **overrides})
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=2, max_length=16,
    )
    return model


def make_tiny_ctc(kind: str = "wav2vec2", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "wav2vec2":
        return Wav2Vec2ForCTC(Wav2Vec2Config(**{**TINY_CTC, **overrides})).eval()
    if kind == "hubert":
        return HubertForCTC(HubertConfig(**{**TINY_CTC, **overrides})).eval()
    raise ValueError(kind)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run single-threaded: on 2 shared cores, two threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_whisper() -> WhisperForConditionalGeneration:
    return make_tiny_whisper()


@pytest.fixture
def whisper_features() -> torch.Tensor:
    # (batch, mel bins, 2 * max_source_positions frames)
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 80, 100, generator=g)


@pytest.fixture(params=["wav2vec2", "hubert"])
def tiny_ctc(request) -> torch.nn.Module:
    return make_tiny_ctc(request.param)


@pytest.fixture
def ctc_audio() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 16000, generator=g)


# the offline Whisper stack (local BPE + Whisper specials, 1 s window) and its smallest trainable dims
OFFLINE_DIMS = dict(d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=64,
                    max_target_positions=48)


@pytest.fixture(scope="session")
def offline_processor():
    """A WhisperProcessor built as the tokenizer stage builds one, from the project's own sentences."""
    from transformers import WhisperProcessor

    from asrcompress.data.text_gen import make_sentences
    from asrcompress.models.whisper import build_feature_extractor, build_tokenizer, train_bpe

    texts = [t for lang in ("en", "hi", "bm") for t in make_sentences(lang, 60, 0, 0, seed=0).train]
    vocab, merges = train_bpe(texts, 400)
    return WhisperProcessor(feature_extractor=build_feature_extractor(1), tokenizer=build_tokenizer(vocab, merges))


def make_offline_rows(n: int = 8, seed: int = 1) -> list[dict]:
    """``n`` English rows in the corpus schema: project sentences over 0.75 s of seeded noise."""
    import numpy as np

    from asrcompress.data.text_gen import make_sentences

    rng = np.random.default_rng(0)
    return [{"id": f"u{i}", "text": t, "language": "en",
             "audio": {"array": (0.1 * rng.standard_normal(12000)).astype(np.float32), "sampling_rate": 16000}}
            for i, t in enumerate(make_sentences("en", n, 0, 0, seed=seed).train)]


def load_stage(name: str, folder: str = "stages"):
    """Import ``<folder>/<name>.py`` (stages and benchmarks are scripts, not a package) to call its functions."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sensitivity_records(model, seed: int = 0) -> list[dict]:
    """Records in p3_sensitivity's schema for ``model`` (per component and layer, as sensitivity_scores
    groups them), with seeded random per-parameter scores in [0.01, 1)."""
    import numpy as np

    from asrcompress.compress.components import param_map

    rng = np.random.default_rng(seed)
    recs: dict = {}
    for info in param_map(model):
        if info.prunable:
            r = recs.setdefault((info.component, info.layer), {"component": info.component, "layer": info.layer,
                                                                "n_params": 0, "score_grad": 0.0, "score_fisher": 0.0})
            r["n_params"] += info.numel
            r["score_fisher"] += float(rng.uniform(0.01, 1.0)) * info.numel
            r["score_grad"] += float(rng.uniform(0.01, 1.0)) * info.numel
    return list(recs.values())


# ------------------------------------------------------------------------------ the committed params.yaml
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
DELETE = object()  # set_param value that removes the key


@pytest.fixture
def committed_params() -> dict:
    """The committed params.yaml as parsed (no profile applied): a fresh copy per test to edit."""
    import yaml

    return yaml.safe_load(PARAMS.read_text())


def set_param(cfg: dict, path: tuple[str, ...], value) -> None:
    """Set (or, with ``DELETE``, remove) the key at ``path`` of a parsed params mapping."""
    node = cfg
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
