"""Audio I/O and checks shared by the synthesiser and the real-corpus loaders.

Every corpus ends as 16 kHz mono float32; anything else is converted here or refused with an
error that names the item.
"""

from __future__ import annotations

import io
import os
import struct
from math import gcd
from typing import BinaryIO

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
                min_seconds: float = 0.05, max_abs: float | None = 1.0) -> np.ndarray:
    """Validate a decoded clip: float samples in [-1, 1] (integer arrays are unscaled PCM and
    refused), mono, finite, non-empty, not silent, at ``expected_sr``.

    Returns the clip as float32. Raises :class:`AudioError` naming ``item`` otherwise.
    """
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"{item}: audio has dtype {audio.dtype}, expected float samples in [-1, 1] "
                         "(integer PCM must be scaled first, e.g. int16 / 32768)")
    if sr != expected_sr:
        raise AudioError(f"{item}: sampling rate {sr} Hz, expected {expected_sr} Hz (resample it first)")
    if audio.ndim != 1:
        raise AudioError(f"{item}: expected mono audio, got array of shape {audio.shape}")
    if audio.size < int(min_seconds * sr):
        raise AudioError(f"{item}: audio is empty or shorter than {min_seconds} s ({audio.size} samples)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{item}: audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(audio)))
    if peak == 0.0:
        raise AudioError(f"{item}: audio is all zeros (silent)")
    if max_abs is not None and peak > max_abs:
        raise AudioError(f"{item}: audio peak {peak:g} is beyond [-{max_abs:g}, {max_abs:g}] "
                         "(unscaled integer PCM?)")
    return audio.astype(np.float32, copy=False)


def check_row_audio(array: object, item: str, max_samples: int | None = None) -> np.ndarray:
    """A dataset row's audio as the models take it: ``np.asarray(array, dtype=float32)``, refused
    (:class:`AudioError` naming ``item``) when it is not 1-D, empty, holds NaN / infinite samples
    or has more than ``max_samples`` samples (a model window). Values are not otherwise changed."""
    audio = np.asarray(array, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"{item}: expected mono (1-D) audio, got array of shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(f"{item}: audio is empty")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{item}: audio contains NaN or infinite samples")
    if max_samples is not None and audio.size > max_samples:
        raise AudioError(f"{item}: audio is {audio.size / TARGET_SR:.2f} s, longer "
                         f"than the model's {max_samples / TARGET_SR:g} s window ({max_samples} samples)")
    return audio


def wav_truncation(f: BinaryIO) -> str | None:
    """For a RIFF/WAVE stream: a description of how it is truncated (its ``data`` chunk, or a chunk
    before it, declares more bytes than the file holds), else ``None``; ``None`` for other formats.

    libsndfile silently shortens a truncated WAV to the bytes present (``sf.info(...).frames``
    included), so the header is read here. The stream position is restored.
    """
    pos = f.tell()
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        fmt = "<I" if head[:4] == b"RIFF" else ">I"
        off = 12
        while off + 8 <= size:
            f.seek(off)
            chunk = f.read(8)
            cid, n = chunk[:4], struct.unpack(fmt, chunk[4:])[0]
            have = size - off - 8
            if cid == b"data":
                if n != 0xFFFFFFFF and n > have:
                    return f"WAV header declares {n} bytes of audio data, the file holds {have}"
                return None
            if n > have:
                return f"WAV chunk {cid!r} declares {n} bytes, the file holds {have}"
            off += 8 + n + (n & 1)
        return "WAV file has no complete 'data' chunk"
    finally:
        f.seek(pos)


def load_audio(source: str | os.PathLike | bytes, item: str | None = None,
               target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode a file path or encoded bytes with soundfile, downmix to mono, resample to 16 kHz.

    A truncated WAV (header longer than the file) and decoded samples beyond [-1, 1] (a float file
    holding unscaled PCM) are refused with an :class:`AudioError` naming the file, as is anything
    :func:`check_audio` refuses.
    """
    import soundfile as sf

    name = item or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if isinstance(source, bytes):
            short = wav_truncation(io.BytesIO(source))
        else:
            with open(source, "rb") as fh:
                short = wav_truncation(fh)
    except OSError as exc:
        raise AudioError(f"{name}: cannot read audio ({exc})") from exc
    if short is not None:
        raise AudioError(f"{name}: truncated audio file ({short})")
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                           dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt / unknown files
        raise AudioError(f"{name}: cannot decode audio ({exc})") from exc
    if data.size and float(np.max(np.abs(data))) > 1.0:
        raise AudioError(f"{name}: decoded samples reach {float(np.max(np.abs(data))):g}, beyond [-1, 1] "
                         "(unscaled integer PCM in a float file?)")
    mono = data.mean(axis=1)
    # resampling may overshoot [-1, 1] slightly on legitimate audio: the range was checked above
    return check_audio(resample(mono, sr, target_sr), target_sr, name, max_abs=None)
