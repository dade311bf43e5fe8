"""Synthetic speakers: what makes each one sound like itself.

- `EspeakSpeaker`: an espeak-ng voice of its own (a voice variant file with pitch, pitch range, formant scale,
  spectral tilt, breath, roughness, flutter and speed) speaking one of espeak-ng's English accents.
- `OtherSpeaker`: a flite or festival voice with its own speaking rate, pitch shift, level and recording channel
  (reverberant room, background noise, telephone line): speech from a different kind of source.

Every field is drawn from a `random.Random` the caller seeds, so a speaker is a pure function of its seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

ESPEAK_ACCENTS = ["en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029"]
FLITE_VOICES = {"kal16": "m", "awb": "m", "rms": "m", "slt": "f"}
FESTIVAL_VOICES = {"kal_diphone": "m", "ked_diphone": "m", "cmu_us_slt_arctic_hts": "f"}
NOISE_KINDS = ["pink", "brown", "hum"]  # white noise at these SNRs drowns every consonant
DEFAULT_CHANNEL_MIX = {"reverb": 0.4, "noise": 0.5, "telephone": 0.5}
DEFAULT_SNR_DB = (10.0, 30.0)  # below ~10 dB, pink noise buries synthetic speech for a small model


@dataclass(frozen=True)
class EspeakSpeaker:
    spk_id: str
    gender: str
    accent: str
    pitch: Tuple[int, int]
    formants: Tuple[Tuple[int, int, int, int], ...]
    tone: Tuple[int, int, int]
    breath: Tuple[int, ...]
    roughness: int
    flutter: int
    speed: int
    level_db: float

    def voice_file(self) -> str:
        """The espeak-ng voice variant file (`espeak-ng -v <accent>+<spk_id>`)."""
        lines = ["language variant", f"name {self.spk_id}", f"gender {'female' if self.gender == 'f' else 'male'}",
                 f"pitch {self.pitch[0]} {self.pitch[1]}"]
        lines += [f"formant {n} {freq} {strength} {width}" for n, freq, strength, width in self.formants]
        lines += [f"tone 600 {self.tone[0]} 1200 {self.tone[1]} 2000 {self.tone[2]}",
                  "breath " + " ".join(map(str, self.breath)), f"roughness {self.roughness}",
                  f"flutter {self.flutter}", f"speed {self.speed}"]
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        return (f"espeak-ng {self.accent}+{self.spk_id} gender={self.gender} pitch={self.pitch[0]}-{self.pitch[1]}"
                f" formant1={self.formants[1][1]} speed={self.speed} roughness={self.roughness}"
                f" breath={max(self.breath)} level={self.level_db:.1f}dB")


@dataclass(frozen=True)
class Channel:
    reverb: Optional[Tuple[int, int, int]] = None  # sox reverb: reverberance, HF damping, room scale (%)
    noise: Optional[str] = None  # one of NOISE_KINDS
    snr_db: Tuple[float, float] = DEFAULT_SNR_DB  # each utterance draws its SNR from this range
    telephone: bool = False  # 300-3400 Hz band through 8 kHz G.711 mu-law and back

    def describe(self) -> str:
        parts = []
        if self.reverb:
            parts.append("reverb={}/{}/{}".format(*self.reverb))
        if self.noise:
            parts.append(f"noise={self.noise}@{self.snr_db[0]:.0f}-{self.snr_db[1]:.0f}dB")
        if self.telephone:
            parts.append("telephone")
        return " ".join(parts) or "clean"


@dataclass(frozen=True)
class OtherSpeaker:
    spk_id: str
    gender: str
    engine: str  # "flite" or "festival"
    voice: str
    stretch: float  # duration stretch: above 1 is slower
    pitch_cents: int
    level_db: float
    channel: Channel

    def describe(self) -> str:
        return (f"{self.engine} {self.voice} gender={self.gender} stretch={self.stretch:.2f}"
                f" pitch={self.pitch_cents:+d}c level={self.level_db:.1f}dB {self.channel.describe()}")


def sample_espeak_speaker(spk_id: str, rng: random.Random) -> EspeakSpeaker:
    gender = rng.choice("mf")
    if gender == "m":
        base = rng.randint(65, 125)
        tract = rng.uniform(90, 106)  # formant scale in percent: a longer vocal tract lowers formants
    else:
        base = rng.randint(140, 220)
        tract = rng.uniform(104, 122)
    formants = tuple(
        (n, round(tract + rng.uniform(-4, 4)), rng.randint(85, 115), rng.randint(85, 130)) for n in range(6)
    )
    breathy = rng.random() < 0.3
    return EspeakSpeaker(
        spk_id=spk_id,
        gender=gender,
        accent=rng.choice(ESPEAK_ACCENTS),
        pitch=(base, base + rng.randint(20, 100)),
        formants=formants,
        tone=(rng.randint(140, 200), rng.randint(110, 160), rng.randint(85, 135)),
        breath=tuple(rng.randint(0, 4) for _ in range(8)) if breathy else (0,) * 8,
        roughness=rng.choice([0, 0, 0, 1, 2, 3, 4]),
        flutter=rng.randint(0, 6),  # x32 inside espeak-ng, whose own default is 2: above ~8 it croaks
        speed=rng.randint(80, 125),
        level_db=round(rng.uniform(-12, -1), 1),
    )


def sample_channel(rng: random.Random, mix: Mapping[str, float] = DEFAULT_CHANNEL_MIX,
                   snr_db: Tuple[float, float] = DEFAULT_SNR_DB) -> Channel:
    """A recording channel; `mix` gives each effect's probability, drawn independently."""
    unknown = set(mix) - set(DEFAULT_CHANNEL_MIX)
    if unknown:
        raise ValueError(f"unknown channel effects {sorted(unknown)}; known: {sorted(DEFAULT_CHANNEL_MIX)}")
    reverb = rng.random() < mix.get("reverb", 0.0)
    noise = rng.random() < mix.get("noise", 0.0)
    telephone = rng.random() < mix.get("telephone", 0.0)
    return Channel(
        reverb=(rng.randint(20, 80), rng.randint(30, 80), rng.randint(30, 100)) if reverb else None,
        noise=rng.choice(NOISE_KINDS) if noise else None,
        snr_db=(float(snr_db[0]), float(snr_db[1])),
        telephone=telephone,
    )


def sample_other_speaker(spk_id: str, rng: random.Random, mix: Mapping[str, float] = DEFAULT_CHANNEL_MIX,
                         snr_db: Tuple[float, float] = DEFAULT_SNR_DB) -> OtherSpeaker:
    engine = rng.choice(["flite", "festival"])
    voices = FLITE_VOICES if engine == "flite" else FESTIVAL_VOICES
    voice = rng.choice(sorted(voices))
    return OtherSpeaker(
        spk_id=spk_id,
        gender=voices[voice],
        engine=engine,
        voice=voice,
        stretch=round(rng.uniform(0.85, 1.2), 2),
        pitch_cents=rng.randint(-300, 300),  # sox shifts formants too: beyond ~20% voices turn cartoonish
        level_db=round(rng.uniform(-12, -1), 1),
        channel=sample_channel(rng, mix, snr_db),
    )
