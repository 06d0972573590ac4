"""The common corpus schema: every corpus, synthetic or real, ends as these columns."""

from __future__ import annotations

from datasets import Features, Value


def corpus_features() -> Features:
    """id, audio {array float32 @16 kHz, sampling_rate}, text (raw), language, speaker, duration (s)."""
    return Features({
        "id": Value("string"),
        "audio": {"array": [Value("float32")], "sampling_rate": Value("int32")},
        "text": Value("string"),
        "language": Value("string"),
        "speaker": Value("string"),
        "duration": Value("float32"),
    })
