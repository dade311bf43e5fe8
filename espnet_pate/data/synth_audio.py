"""Rendering a synthetic speaker's utterances to 16 kHz mono 16-bit WAV files.

Byte-identical across runs: the synthesisers are deterministic, sox runs with `-R` (repeatable dither), and
everything drawn at random (padding, SNR, noise) comes from a generator seeded by the utterance id.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from espnet_pate.data.grammar import spoken_form
from espnet_pate.data.synth_speakers import Channel, EspeakSpeaker, OtherSpeaker

SAMPLE_RATE = 16000
_TO_16K = ["-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", "-e", "signed-integer"]
_NO_NATIVE_STRETCH = {"cmu_us_slt_arctic_hts"}  # festival's HTS voice ignores Duration_Stretch: use sox tempo

Utterance = Tuple[str, str]  # (utt_id, transcript)


def _run(cmd: Sequence[str], **kwargs) -> None:
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")


def _pipe(producer: Sequence[str], consumer: Sequence[str]) -> None:
    first = subprocess.Popen(list(producer), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _run(consumer, stdin=first.stdout)
    finally:
        first.stdout.close()
        err = first.stderr.read()
        first.stderr.close()
        if first.wait() != 0:
            raise RuntimeError(f"{producer[0]} failed ({first.returncode}): {err.decode()[-500:]}")


def _padding(rng: random.Random) -> List[str]:
    return ["pad", f"{rng.uniform(0.05, 0.3):.3f}", f"{rng.uniform(0.05, 0.3):.3f}"]


def espeak_data_dir() -> Path:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    if not match:
        raise RuntimeError(f"cannot find espeak-ng's data folder in: {out!r}")
    return Path(match.group(1))


class EspeakVoices:
    """A private espeak-ng data folder (links to the system's) whose variant folder holds our speakers' voices.

    espeak-ng only finds voice variants inside its data folder, and a variant (`-v en-gb-scotland+spk`) keeps
    the accent's own phonemes and rules, which a full voice file naming the accent would not.
    """

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)
        data = self.root / "espeak-ng-data"
        (data / "voices" / "!v").mkdir(parents=True, exist_ok=True)
        for entry in espeak_data_dir().iterdir():
            if entry.name != "voices" and not (data / entry.name).exists():
                (data / entry.name).symlink_to(entry)

    def add(self, speaker: EspeakSpeaker) -> None:
        (self.root / "espeak-ng-data" / "voices" / "!v" / speaker.spk_id).write_text(speaker.voice_file())


def render_espeak(speaker: EspeakSpeaker, utts: Sequence[Utterance], wav_dir: Path, voices: EspeakVoices,
                  seed: int) -> None:
    voices.add(speaker)
    for utt_id, text in utts:
        rng = random.Random(f"{seed}/audio/{utt_id}")
        _pipe(
            ["espeak-ng", f"--path={voices.root}", "-v", f"{speaker.accent}+{speaker.spk_id}", "--stdout",
             spoken_form(text)],
            ["sox", "-R", "-t", "wav", "-", *_TO_16K, str(wav_dir / f"{utt_id}.wav"), *_padding(rng),
             "gain", "-n", str(speaker.level_db)],
        )


def _synthesise_other(speaker: OtherSpeaker, utts: Sequence[Utterance], raw_dir: Path) -> None:
    if speaker.engine == "flite":
        for utt_id, text in utts:
            _run(["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={speaker.stretch}",
                  "-t", spoken_form(text), "-o", str(raw_dir / f"{utt_id}.wav")])
        return
    # One festival process for all of a speaker's utterances: its start-up costs more than a sentence.
    lines = [f"(voice_{speaker.voice})", f"(Parameter.set 'Duration_Stretch {speaker.stretch})"]
    for utt_id, text in utts:
        lines.append(f'(utt.save.wave (SynthText "{spoken_form(text)}") "{raw_dir / utt_id}.wav" \'riff)')
    script = raw_dir / "synth.scm"
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "-b", str(script)])


def render_other(speaker: OtherSpeaker, utts: Sequence[Utterance], wav_dir: Path, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="synth_raw_") as tmp:
        raw_dir = Path(tmp)
        _synthesise_other(speaker, utts, raw_dir)
        for utt_id, _ in utts:
            rng = random.Random(f"{seed}/audio/{utt_id}")
            voice = ["pitch", str(speaker.pitch_cents)]
            if speaker.voice in _NO_NATIVE_STRETCH:
                voice += ["tempo", "-s", f"{1 / speaker.stretch:.3f}"]
            room = ["reverb", *map(str, speaker.channel.reverb)] if speaker.channel.reverb else []
            staged = raw_dir / f"{utt_id}.16k.wav"
            _run(["sox", "-R", str(raw_dir / f"{utt_id}.wav"), *_TO_16K, str(staged), *voice, *_padding(rng),
                  *room, "gain", "-n", str(speaker.level_db)])
            if speaker.channel.noise:
                add_noise(staged, speaker.channel, rng)
            final = wav_dir / f"{utt_id}.wav"
            if speaker.channel.telephone:
                telephone(staged, final)
            else:
                os.replace(staged, final)


def telephone(src: Path, dest: Path) -> None:
    """The telephone band (300-3400 Hz) through 8 kHz G.711 mu-law, back at 16 kHz."""
    _pipe(["sox", "-R", str(src), "-t", "wav", "-r", "8000", "-e", "u-law", "-c", "1", "-", "sinc", "300-3400"],
          ["sox", "-R", "-t", "wav", "-", *_TO_16K, str(dest)])


def read_wav(path: os.PathLike | str) -> Tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit samples, found {8 * w.getsampwidth()}-bit")
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return audio.reshape(-1, w.getnchannels())[:, 0], w.getframerate()


def write_wav(path: os.PathLike | str, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.round(audio), -32768, 32767).astype("<i2").tobytes())


def noise(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "hum":  # mains hum with harmonics over a faint hiss
        t = np.arange(n) / rate
        mains = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        return hum + 0.3 * rng.standard_normal(n)
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude slope: 1/f power for pink, 1/f^2 for brown
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[1:] /= freqs[1:] ** exponent
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def add_noise(path: Path, channel: Channel, rng: random.Random) -> None:
    """Add the channel's noise at an SNR drawn for this utterance, measured against the speech frames."""
    audio, rate = read_wav(path)
    speech = audio[np.abs(audio) > 0.01 * np.abs(audio).max()] if audio.any() else audio
    speech_power = float(np.mean(speech ** 2)) if speech.size else 0.0
    noisy = noise(channel.noise, audio.size, rate, np.random.default_rng(rng.getrandbits(64)))
    snr = rng.uniform(*channel.snr_db)
    noisy *= np.sqrt(speech_power / (np.mean(noisy ** 2) * 10 ** (snr / 10) + 1e-12))
    mixed = audio + noisy
    peak = np.abs(mixed).max()
    if peak > 32000:
        mixed *= 32000 / peak
    write_wav(path, mixed, rate)
