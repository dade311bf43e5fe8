"""Make the student's training directory: the audio of `public_unlabeled` with the given transcripts (PATE's
pseudo-transcripts; utterances without one, e.g. refused by a threshold, are left out).

    python -m espnet_pate.bin.make_student_data data/public_unlabeled exp/pate/gnmax_eps8/text data/student_gnmax_eps8
"""
import argparse
from pathlib import Path

from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir, read_table, write_kaldi_dir


def make_student_data(audio_dir, text_file, out_dir) -> int:
    audio = read_kaldi_dir(audio_dir, require_text=False)
    text = read_table(text_file, allow_empty_value=True)
    unknown = sorted(set(text) - set(audio.wav_scp))
    if unknown:
        raise KaldiDirError(text_file, f"{len(unknown)} utterances not in {audio_dir}/wav.scp, e.g. '{unknown[0]}'")
    if not text:
        raise KaldiDirError(text_file, "no transcripts: nothing to train a student on")
    write_kaldi_dir(out_dir, {u: audio.wav_scp[u] for u in text}, {u: audio.utt2spk[u] for u in text}, text)
    return len(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio_dir")
    p.add_argument("text")
    p.add_argument("out_dir")
    a = p.parse_args(argv)
    n = make_student_data(a.audio_dir, a.text, a.out_dir)
    print(f"{Path(a.out_dir)}: {n} utterances")


if __name__ == "__main__":
    main()
