"""Stage 2's public rules for transcripts: which characters the tokenizer can encode, and how much audio a
transcript needs. They depend on public facts only (the public token list, speaking rates), never on the data.

Characters: with a token list (stage 2 builds it from public_labeled; `--token_list`), a transcript may use only
characters that its tokens are made of: any other becomes `<unk>`, which nothing can learn or output. Without one,
the recipe's normalisation: lowercase a-z, apostrophe, words separated by single spaces (digits spelled out, no
punctuation), which is what the embedded corpus writes (README, "Your own data").

Audio length, checked per utterance:
- MIN_SECONDS = 0.1: the recipe's frontend and convolutional input (n_fft 512, 10 ms hop, 4x subsampling) turn
  0.1 s into 2 encoder frames and 0.06 s into 1; below that ESPnet's training stops with an error (measured: a
  10 ms utterance fails in the STFT's padding, 20-50 ms ones in the first 3x3 convolution). Real recordings of a
  single word are longer (FSDD's spoken digits, cut tightly at the word's edges: 0.14 s at the shortest).
- MAX_CHARS_PER_SECOND = 40, counting spaces: about twice fast read speech (reading at 150 words a minute is
  about 14; the synthetic corpus measures 14 at the median, 22 at the most) and 1.45x the fastest real recording
  measured (FSDD's "three" in 0.18 s: 27.5). A transcript above it almost always belongs to another, longer
  utterance. (The transducer can emit several tokens per frame; the auxiliary CTC loss, at 25 encoder frames a
  second, cannot align an utterance above about 25 characters a second and is zeroed for it, not failed.)
"""
from __future__ import annotations

import os
import string
from typing import FrozenSet, Optional

MIN_SECONDS = 0.1
MAX_CHARS_PER_SECOND = 40.0
DEFAULT_CHARACTERS = frozenset(string.ascii_lowercase + "' ")
DEFAULT_RULE = "the recipe's normalisation: lowercase a-z, apostrophe, single spaces; README, 'Your own data'"
_SPACE_TOKENS = {"<space>": " ", "\u2581": " "}  # ESPnet's char tokenizer; sentencepiece's word boundary
_LISTED = 8


def token_list_characters(token_list: os.PathLike | str) -> FrozenSet[str]:
    """The characters a token list's tokens are made of (ESPnet's tokens.txt: one token per line).

    Symbols such as `<blank>` and `<unk>` add none; `<space>` and sentencepiece's `▁` stand for a space.
    """
    chars = set()
    with open(token_list, encoding="utf-8") as f:
        for line in f:
            token = line.strip()
            if token in _SPACE_TOKENS:
                chars.add(" ")
            elif token and not (token.startswith("<") and token.endswith(">")):
                chars.update(token.replace("\u2581", " "))
    if not chars - {" "}:
        raise ValueError(f"{token_list}: no character tokens in it: is it an ESPnet token list (tokens.txt)?")
    return frozenset(chars)


def character_problem(transcript: str, allowed: FrozenSet[str], rule: str) -> Optional[str]:
    """What in `transcript` the tokenizer cannot encode (characters outside `allowed`, doubled spaces), or None.

    `rule` names where `allowed` comes from, for the message.
    """
    bad = sorted(set(transcript) - allowed)
    problems = []
    if bad:
        shown = " ".join(repr(c) for c in bad[:_LISTED]) + (" ..." if len(bad) > _LISTED else "")
        problems.append(f"characters the tokenizer cannot encode ({rule}): {shown}")
    if "  " in transcript:
        problems.append("words separated by more than one space")
    return "; ".join(problems) or None


def length_problem(seconds: float) -> Optional[str]:
    """What is wrong with an utterance of `seconds`, or None."""
    if seconds < MIN_SECONDS:
        return f"utterance of {seconds:.3f} s, shorter than the minimum of {MIN_SECONDS} s"
    return None


def rate_problem(transcript: str, seconds: float) -> Optional[str]:
    """What is wrong with `transcript` spoken in `seconds` of audio, or None."""
    if len(transcript) > MAX_CHARS_PER_SECOND * seconds:
        return (f"{len(transcript)} characters for {seconds:.3f} s of audio: more than {MAX_CHARS_PER_SECOND:.0f} "
                f"characters per second, faster than anyone speaks (the transcript of another utterance?)")
    return None
