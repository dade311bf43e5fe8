"""Copy the utterances of a Kaldi directory whose transcript holds none of the words of a list: for the public model,
held-out data it can know (dev without the withheld words), so that checkpoint selection and early stopping are
not driven by words no public transcript holds.

    python -m espnet_pate.bin.exclude_words_data_dir data/dev data/withheld_words.txt data/dev_public
"""
import argparse
import os
from pathlib import Path
from typing import Iterable, List

from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir, subset_kaldi_dir


def utts_without_words(text: dict, words: Iterable[str]) -> List[str]:
    words = set(words)
    return sorted(u for u, t in text.items() if not words.intersection(t.split()))


def exclude_words_data_dir(src: os.PathLike | str, words_file: os.PathLike | str, dest: os.PathLike | str) -> int:
    data = read_kaldi_dir(src)
    words = Path(words_file).read_text(encoding="utf-8").split()
    ids = utts_without_words(data.text, words)
    if not ids:
        raise KaldiDirError(Path(src) / "text", f"every utterance holds a word of {words_file}")
    subset_kaldi_dir(data, dest, ids)
    return len(ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("words", help="file of words, whitespace-separated (e.g. data/withheld_words.txt)")
    p.add_argument("dest")
    a = p.parse_args(argv)
    n = exclude_words_data_dir(a.src, a.words, a.dest)
    print(f"{Path(a.dest)}: {n} utterances without the words of {a.words}")


if __name__ == "__main__":
    main()
