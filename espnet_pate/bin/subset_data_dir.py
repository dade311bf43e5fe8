"""Copy N evenly spaced utterances of a Kaldi directory (in sorted id order, as Kaldi's subset_data_dir.sh does):
a smaller validation set for jobs that validate every epoch many times over, such as the K teachers.

    python -m espnet_pate.bin.subset_data_dir data/dev 50 data/dev_50
"""
import argparse
from pathlib import Path

from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir, subset_kaldi_dir


def evenly_spaced(ids, num: int):
    ids = sorted(ids, key=lambda u: u.encode("utf-8"))
    if num >= len(ids):
        return ids
    return [ids[(i * len(ids)) // num] for i in range(num)]


def subset_data_dir(src, num_utts: int, dest) -> int:
    if num_utts < 1:
        raise ValueError(f"number of utterances must be positive, got {num_utts}")
    data = read_kaldi_dir(src, require_text=False)
    if not data.wav_scp:
        raise KaldiDirError(Path(src) / "wav.scp", "no utterances")
    ids = evenly_spaced(data.wav_scp, num_utts)
    subset_kaldi_dir(data, dest, ids)
    return len(ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("num_utts", type=int)
    p.add_argument("dest")
    a = p.parse_args(argv)
    n = subset_data_dir(a.src, a.num_utts, a.dest)
    print(f"{Path(a.dest)}: {n} utterances")


if __name__ == "__main__":
    main()
