"""Write ESPnet's shape file (`utt num_samples`) for a Kaldi directory, from audio headers only.

    python -m espnet_pate.bin.make_shape_file data/public_labeled dump/shapes/public_labeled/speech_shape
"""
import argparse
from pathlib import Path

import soundfile

from espnet_pate.data.kaldi_dir import read_table, write_table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("out")
    a = p.parse_args(argv)
    wav_scp = read_table(Path(a.data_dir) / "wav.scp")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_table(a.out, ((utt, str(soundfile.info(path).frames)) for utt, path in wav_scp.items()))


if __name__ == "__main__":
    main()
