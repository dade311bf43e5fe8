"""Stage 2's audio checks of one wav.scp entry: a readable file at the recipe's sample rate, mono, not cut short.

libsndfile (soundfile) reads a WAV file whose data chunk was cut short (an interrupted copy or download) without
an error: it clamps the length to the bytes present, so the truncated recording looks valid and shorter. WAV
headers are therefore read here and the data chunk's declared size compared with the bytes in the file. Other
formats (FLAC, ...) are read at their end: seeking to the last frames that the header claims fails, or reads
fewer, when the file was cut (about 0.1 ms a file, where decoding a whole one takes 1 ms per 2 s of audio).
"""
from __future__ import annotations

import os
import re
import struct
from typing import Optional, Tuple

import soundfile

_KALDI_ARK = re.compile(r"\.ark:\d+$")
_UNSET_SIZES = (0, 0xFFFFFFFF)  # what streaming writers (sox to a pipe) leave in a size they cannot know yet


def audio_problem(entry: str, sample_rate: int) -> Tuple[Optional[str], float]:
    """Return (what is wrong or None, duration in seconds; 0 when wrong) for the audio of one wav.scp entry.

    A relative path is resolved from the current directory, as ESPnet does.
    """
    if entry.endswith("|"):
        return "pipe entries ('command |') are not supported: write the audio to files first", 0.0
    if _KALDI_ARK.search(entry):
        return "Kaldi ark entries are not supported: write the audio to files first", 0.0
    if not os.path.isfile(entry):
        where = "" if os.path.isabs(entry) else f" (relative paths are read from {os.getcwd()})"
        return f"audio file not found: {entry}{where}", 0.0
    try:
        info = soundfile.info(entry)
    except (RuntimeError, OSError) as e:  # libsndfile's errors are RuntimeErrors
        return f"cannot read audio {entry}: {e}", 0.0
    if info.samplerate != sample_rate:
        return f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz: {entry}", 0.0
    if info.channels != 1:
        # ESPnet's default frontend would silently train on one random channel of it.
        return f"{info.channels} channels, expected mono: {entry}", 0.0
    if info.frames <= 0:
        return f"audio has no samples: {entry}", 0.0
    short = _wav_truncation(entry, sample_rate) if info.format == "WAV" else _tail_truncation(entry, info.frames)
    if short:
        return f"{short}: {entry} (an interrupted copy? copy or convert it again)", 0.0
    return None, info.frames / info.samplerate


def _wav_truncation(path: str, sample_rate: int) -> Optional[str]:
    """'file is shorter than its header claims ...' when the RIFF data chunk is cut short, else None."""
    size = os.path.getsize(path)
    block_align = 0
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RF64 and other variants: libsndfile has read the header, nothing more to compare
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = f.read(chunk_size)
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
                f.seek(chunk_size & 1, os.SEEK_CUR)
            elif chunk_id == b"data":
                present = size - f.tell()
                if chunk_size in _UNSET_SIZES or present >= chunk_size or block_align <= 0:
                    return None
                claimed, held = chunk_size // block_align, present // block_align
                return (f"file is shorter than its header claims: {claimed} frames ({claimed / sample_rate:.3f} s) "
                        f"in the header, {held} ({held / sample_rate:.3f} s) in the file")
            else:
                f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def _tail_truncation(path: str, frames: int) -> Optional[str]:
    """'cannot read the end ...' or 'file is shorter ...' when the last frames the header claims are missing."""
    tail = min(frames, 4096)
    try:
        with soundfile.SoundFile(path) as f:
            f.seek(frames - tail)
            got = len(f.read(tail, dtype="int16"))
    except RuntimeError as e:
        return f"cannot read the end of the audio that the header claims ({frames} frames): {e}"
    if got < tail:
        return f"file is shorter than its header claims: {frames} frames in the header, {frames - tail + got} read"
    return None
