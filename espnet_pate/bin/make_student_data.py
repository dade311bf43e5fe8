"""Make the student's training directory: the audio of `public_unlabeled` with the given transcripts (PATE's
pseudo-transcripts; utterances without one, e.g. refused by a threshold, are left out).

    python -m espnet_pate.bin.make_student_data data/public_unlabeled exp/pate/gnmax_eps8/text data/student_gnmax_eps8
    python -m espnet_pate.bin.make_student_data --release exp/pate/gnmax_eps8 --datadir data data/student_gnmax_eps8

With ``--release``, the transcripts are the release's ``text`` and the audio is that of the public set it labelled
(``public_data`` in its privacy.json, under ``--datadir``).
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


def release_source(release_dir) -> str:
    """The public set a stage-4 release labelled (its privacy.json's ``public_data``)."""
    from espnet_pate.report.privacy_json import PRIVACY_FILE, read_privacy_info

    source = read_privacy_info(release_dir).get("public_data")
    if not source:
        raise KaldiDirError(Path(release_dir) / PRIVACY_FILE, "no public_data: the release predates it; rerun stage "
                            "4, which reuses recorded releases (nothing is spent) and records the set they label")
    return source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", metavar="DIR", help="a stage-4 release: its text, and the audio it labelled")
    p.add_argument("--datadir", default="data", help="with --release: where the public sets are (default data)")
    p.add_argument("paths", nargs="+", metavar="AUDIO_DIR TEXT OUT_DIR | OUT_DIR")
    a = p.parse_args(argv)
    if len(a.paths) != (1 if a.release else 3):
        p.error("give AUDIO_DIR TEXT OUT_DIR, or --release DIR OUT_DIR")
    try:
        if a.release:
            audio_dir, text, out_dir = Path(a.datadir) / release_source(a.release), Path(a.release) / "text", a.paths[0]
        else:
            audio_dir, text, out_dir = a.paths
        n = make_student_data(audio_dir, text, out_dir)
    except KaldiDirError as err:
        p.exit(2, f"make_student_data: error: {err}\n")
    print(f"{Path(out_dir)}: {n} utterances from {audio_dir}")


if __name__ == "__main__":
    main()
