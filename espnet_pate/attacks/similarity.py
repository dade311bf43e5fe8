"""How close a reconstructed log-mel sequence is to the original: correlation and mel-cepstral distortion.

Sequences of different lengths are aligned by linear interpolation of the reconstruction onto the original's
frames. Mel-cepstral distortion here is the MFCC form: cepstra = orthonormal DCT-II of each frame's log-mel
(natural log of mel power, as ESPnet's frontend gives it) halved to log amplitude, coefficients 1-12 (c0, the
loudness, left out), MCD = 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2) in dB, averaged over frames.
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dct

__all__ = ["align_length", "logmel_correlation", "mel_cepstral_distortion"]


def align_length(x: np.ndarray, num_frames: int) -> np.ndarray:
    """[T, F] -> [num_frames, F] by linear interpolation along time."""
    x = np.asarray(x, float)
    if x.shape[0] == num_frames:
        return x
    src = np.linspace(0.0, 1.0, x.shape[0])
    dst = np.linspace(0.0, 1.0, num_frames)
    return np.stack([np.interp(dst, src, x[:, f]) for f in range(x.shape[1])], axis=1)


def logmel_correlation(original: np.ndarray, recon: np.ndarray) -> float:
    """Pearson correlation over every (frame, bin) cell."""
    a = np.asarray(original, float)
    b = align_length(recon, a.shape[0])
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def mel_cepstral_distortion(original: np.ndarray, recon: np.ndarray, num_ceps: int = 12) -> float:
    a = np.asarray(original, float)
    b = align_length(recon, a.shape[0])
    ca = dct(a / 2, type=2, norm="ortho", axis=1)[:, 1: num_ceps + 1]
    cb = dct(b / 2, type=2, norm="ortho", axis=1)[:, 1: num_ceps + 1]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * ((ca - cb) ** 2).sum(axis=1))))
