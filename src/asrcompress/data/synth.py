"""Speech synthesis with espeak-ng (from the ``espeakng-loader`` wheel, through ctypes).

The wheel ships the espeak-ng shared library and its voice data, so nothing needs root.
espeak-ng writes 22,050 Hz 16-bit mono; we resample to 16 kHz. Per-utterance variation: voice
variant (``+m1`` ... ``+f4`` ...), speaking rate, pitch, pitch range, loudness, and optional
additive white noise at a set SNR, all drawn from a seeded RNG.
"""

from __future__ import annotations

import ctypes
import random
import re
import threading
from dataclasses import dataclass

import numpy as np

from asrcompress.data.audio import TARGET_SR, resample

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

# Variants whose output is bit-identical across processes (checked by a test). espeak-ng's f2 and
# f3 are not (their breathiness varies run to run), so they are left out.
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f4", "klatt", "Andy", "Annie", "Denis",
                  "Michael", "steph")

# espeak voice per corpus language; Bambara stand-in spoken by the Swahili voice
ESPEAK_VOICE = {"en": "en", "hi": "hi", "bm": "sw", "fr": "fr"}
# Bambara letters written the way the Swahili voice reads the same sounds
_BM_TO_SW = [("ɛ", "e"), ("ɔ", "o"), ("ɲ", "ny"), ("ŋ", "ng"), ("c", "ch")]


class SynthesisError(RuntimeError):
    """A clip that could not be synthesised; the message names the utterance."""


@dataclass(frozen=True)
class VoiceSettings:
    variant: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    gain: float
    snr_db: float | None

    @property
    def speaker(self) -> str:
        """The voice variant is the speaker; rate, pitch and loudness vary per utterance."""
        return f"espeak-{self.variant}"


def draw_voice(rng: random.Random, rate: tuple[int, int], pitch: tuple[int, int],
               gain: tuple[float, float], noise_prob: float, snr_db: float) -> VoiceSettings:
    """Draw one utterance's voice settings from ranges given in params."""
    return VoiceSettings(
        variant=rng.choice(VOICE_VARIANTS),
        rate_wpm=rng.randint(*rate),
        pitch=rng.randint(*pitch),
        pitch_range=rng.randint(30, 80),
        gain=rng.uniform(*gain),
        snr_db=snr_db if rng.random() < noise_prob else None,
    )


class Espeak:
    """A process-wide espeak-ng instance (the C library keeps global state; calls are locked)."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise SynthesisError("espeak-ng failed to initialise (espeakng-loader data path)")
        self._chunks: list[np.ndarray] = []
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def _collect(wav, n, _events):  # called from espeak_Synth in this thread
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = cb_type(_collect)  # keep a reference: ctypes must not free it
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = Espeak()
            return cls._instance

    def speak(self, text: str, voice: str, rate_wpm: int = 175, pitch: int = 50,
              pitch_range: int = 50) -> np.ndarray:
        """Synthesise ``text`` with espeak voice name ``voice`` (e.g. ``"en+m3"``); float32 at 22,050 Hz."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthesisError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, int(rate_wpm), 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self._lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
            self._chunks = []
            data = text.encode("utf-8")
            rc = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if rc != 0 or not chunks:
            raise SynthesisError(f"espeak-ng returned {rc} and {len(chunks)} audio chunks for {text!r}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def _segments(text: str, language: str, french_words: frozenset[str]) -> list[tuple[str, str]]:
    """Split into (espeak language, text) runs; Bambara words are respelled for the Swahili voice."""
    if language != "bm":
        return [(language, text)]
    runs: list[tuple[str, str]] = []
    for word in text.split():
        lang = "fr" if word in french_words else "bm"
        if lang == "bm":
            for src, dst in _BM_TO_SW:
                word = word.replace(src, dst)
        if runs and runs[-1][0] == lang:
            runs[-1] = (lang, runs[-1][1] + " " + word)
        else:
            runs.append((lang, word))
    return runs


def _trim_silence(audio: np.ndarray, threshold: float = 1e-3, pad: int = 800) -> np.ndarray:
    idx = np.flatnonzero(np.abs(audio) > threshold)
    if idx.size == 0:
        return audio
    return audio[max(0, idx[0] - pad): idx[-1] + 1 + pad]


def synthesise(text: str, language: str, voice: VoiceSettings, rng: np.random.Generator,
               utt_id: str, french_words: frozenset[str] = frozenset()) -> np.ndarray:
    """One utterance as float32 mono at 16 kHz, with the voice's gain and noise applied."""
    if not text or not text.strip():
        raise SynthesisError(f"{utt_id}: empty text, nothing to synthesise")
    if language not in ESPEAK_VOICE:
        raise SynthesisError(f"{utt_id}: no espeak voice for language {language!r}")
    engine = Espeak.get()
    gap = np.zeros(int(0.05 * engine.sample_rate), dtype=np.float32)
    pieces = []
    for lang, chunk in _segments(text, language, french_words):
        spoken = re.sub(r"[।॥]", " ", chunk)  # dandas are punctuation, not speech
        try:
            pieces.append(engine.speak(spoken, f"{ESPEAK_VOICE[lang]}+{voice.variant}", voice.rate_wpm,
                                       voice.pitch, voice.pitch_range))
        except SynthesisError as exc:
            raise SynthesisError(f"{utt_id}: {exc}") from exc
        pieces.append(gap)
    audio = _trim_silence(np.concatenate(pieces[:-1]))
    audio = resample(audio, engine.sample_rate, TARGET_SR)
    peak = float(np.max(np.abs(audio)))
    if peak == 0.0 or not np.isfinite(peak):
        raise SynthesisError(f"{utt_id}: synthesiser produced silence or non-finite samples")
    audio = audio / peak * voice.gain
    if voice.snr_db is not None:
        audio = add_noise(audio, voice.snr_db, rng)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise so that signal power / noise power = ``snr_db`` (in dB)."""
    noise_power = float(np.mean(audio**2)) / (10 ** (snr_db / 10))
    return (audio + rng.normal(0.0, np.sqrt(noise_power), size=audio.shape)).astype(np.float32)
