"""Audio I/O and checks shared by the synthesiser and the real-corpus loaders.

Every corpus ends as 16 kHz mono float32; anything else is converted here or refused with an
error that names the item.
"""

from __future__ import annotations

import io
import os
from math import gcd

import numpy as np

TARGET_SR = 16_000


class AudioError(ValueError):
    """An unusable audio item; the message names it."""


def resample(audio: np.ndarray, sr_in: int, sr_out: int = TARGET_SR) -> np.ndarray:
    """Polyphase resampling (scipy) to ``sr_out``; a no-op when the rates agree."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(audio.astype(np.float64), sr_out // g, sr_in // g).astype(np.float32)


def check_audio(audio: np.ndarray, sr: int, item: str, expected_sr: int = TARGET_SR,
                min_seconds: float = 0.05) -> np.ndarray:
    """Validate a decoded clip: mono, finite, non-empty, not silent, at ``expected_sr``.

    Returns the clip as float32. Raises :class:`AudioError` naming ``item`` otherwise.
    """
    audio = np.asarray(audio)
    if sr != expected_sr:
        raise AudioError(f"{item}: sampling rate {sr} Hz, expected {expected_sr} Hz (resample it first)")
    if audio.ndim != 1:
        raise AudioError(f"{item}: expected mono audio, got array of shape {audio.shape}")
    if audio.size < int(min_seconds * sr):
        raise AudioError(f"{item}: audio is empty or shorter than {min_seconds} s ({audio.size} samples)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{item}: audio contains NaN or infinite samples")
    if float(np.max(np.abs(audio))) == 0.0:
        raise AudioError(f"{item}: audio is all zeros (silent)")
    return audio.astype(np.float32, copy=False)


def load_audio(source: str | os.PathLike | bytes, item: str | None = None,
               target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode a file path or encoded bytes with soundfile, downmix to mono, resample to 16 kHz."""
    import soundfile as sf

    name = item or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                           dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt / unknown files
        raise AudioError(f"{name}: cannot decode audio ({exc})") from exc
    mono = data.mean(axis=1)
    return check_audio(resample(mono, sr, target_sr), target_sr, name)
