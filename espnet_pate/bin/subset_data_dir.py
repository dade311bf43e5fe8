"""Copy N evenly spaced utterances of a Kaldi directory (in sorted id order, as Kaldi's subset_data_dir.sh does):
a smaller validation set for jobs that validate every epoch many times over, such as the K teachers. With
``--speakers``, N evenly spaced speakers with all their utterances (Kaldi's ``--speakers``): a subset of the members
for a speaker-level membership audit.

    python -m espnet_pate.bin.subset_data_dir data/dev 50 data/dev_50
    python -m espnet_pate.bin.subset_data_dir --speakers data/sensitive 100 data/sensitive_spk100
"""
import argparse
from pathlib import Path

from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir, subset_kaldi_dir


def evenly_spaced(ids, num: int):
    ids = sorted(ids, key=lambda u: u.encode("utf-8"))
    if num >= len(ids):
        return ids
    return [ids[(i * len(ids)) // num] for i in range(num)]


def subset_data_dir(src, num: int, dest, speakers: bool = False) -> int:
    """Copy ``num`` evenly spaced utterances (or speakers, with all their utterances); returns the utterances."""
    if num < 1:
        raise ValueError(f"number of {'speakers' if speakers else 'utterances'} must be positive, got {num}")
    data = read_kaldi_dir(src, require_text=False)
    if not data.wav_scp:
        raise KaldiDirError(Path(src) / "wav.scp", "no utterances")
    if speakers:
        chosen = set(evenly_spaced(set(data.utt2spk.values()), num))
        ids = [u for u in data.wav_scp if data.utt2spk[u] in chosen]
    else:
        ids = evenly_spaced(data.wav_scp, num)
    subset_kaldi_dir(data, dest, ids)
    return len(ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", action="store_true", help="N speakers with all their utterances")
    p.add_argument("src")
    p.add_argument("num", type=int, help="utterances (or speakers, with --speakers)")
    p.add_argument("dest")
    a = p.parse_args(argv)
    n = subset_data_dir(a.src, a.num, a.dest, speakers=a.speakers)
    print(f"{Path(a.dest)}: {n} utterances")


if __name__ == "__main__":
    main()
