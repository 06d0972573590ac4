"""Is our converted Whisper base the same model as the CTranslate2 original? Greedy transcripts of the
real English test set (``data/corpora/en_real``, built by ``prepare_real@en_real``) from the CTranslate2
runtime (float32) fed with OUR log-mel features and the same prompt, compared word for word (English
normaliser) with our measured hypotheses (``reports/hyps/base_en_real.jsonl``).

A difference here would be a conversion difference; faster-whisper's 22/100 differing transcripts
(``bench_anchor.py``) include its own numpy front-end as well. Measured: 0/100 differ.

    .venv/bin/python benchmarks/bench_ct2_same_features.py     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ctranslate2
import numpy as np
from transformers import WhisperProcessor

from asrcompress.config import get, load_params
from asrcompress.io import load_split
from asrcompress.models.real_checkpoints import ct2_directory, locate
from asrcompress.text.normalize import get_normalizer

PROMPT = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def main() -> None:
    spec = get(load_params(), "real_models.whisper_base", dict)
    norm = get_normalizer("english")
    rows = load_split("data/corpora/en_real", "test")
    ours = {r["id"]: r["hyp"] for r in map(json.loads, Path("reports/hyps/base_en_real.jsonl").read_text().splitlines())}
    processor = WhisperProcessor.from_pretrained("data/models/real/whisper_base")
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = ct2_directory([locate(f) for f in spec["files"]], locate(spec["meta_dir"]), Path(tmp) / "ct2")
        engine = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)
        differ = []
        for r in rows:
            feats = processor.feature_extractor([np.asarray(r["audio"]["array"], dtype=np.float32)],
                                                sampling_rate=16000, return_tensors="np").input_features
            out = engine.generate(ctranslate2.StorageView.from_array(feats), [PROMPT], beam_size=1, max_length=224)
            text = processor.tokenizer.decode(out[0].sequences_ids[0], skip_special_tokens=True).strip()
            if norm(text) != norm(ours[r["id"]]):
                differ.append((r["id"], ours[r["id"]], text))
    print(f"CTranslate2 float32 on our features vs ours: {len(differ)}/{len(rows)} transcripts differ "
          "after normalisation")
    for utt, mine, theirs in differ[:10]:
        print(f"  {utt}\n    ours: {mine}\n    ct2:  {theirs}")


if __name__ == "__main__":
    main()
