"""Train K PATE teachers' heads (decoder + joint network) together in one process (recipe stage 3).

    python -m espnet_pate.bin.train_teacher_heads --public exp/public_only --shards data/sensitive_speaker_k40
        --valid data/dev_50 --out exp/teachers_head_k40 --config conf/train_teacher_heads.yaml
        [--num-teachers K] [--teacher-chunk G] [--model-file valid.loss.ave.pth]

Reads SHARDS/shard_0 .. shard_{K-1}; writes OUT/teacher_<k> as ESPnet experiment directories (config.yaml,
valid.loss.ave.pth) and OUT/.done. A killed run resumes from its last finished epoch; a finished one is skipped.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from espnet_pate.ensemble.joint_heads_train import load_train_config, train_teacher_heads
from espnet_pate.data.kaldi_dir import KaldiDirError, numbered_dirs


def shard_dirs_in(path: Path, num: Optional[int] = None) -> list:
    found = numbered_dirs(path, "shard_", " (run stage 3's partition_data_dir first)")
    if num is not None:
        if num > len(found):
            raise FileNotFoundError(f"{path}: {len(found)} shards, {num} asked for")
        found = found[:num]
    return found


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the process: by default it hands every large freed block back to the
    system and page-faults it in again, and the joint network allocates tensors of tens of MB at every step
    (what it saves: README). Peak memory is unchanged."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    big = ctypes.c_int(2 ** 31 - 1)
    return all(libc.mallopt(opt, val) == 1 for opt, val in
               ((m_mmap_threshold, big), (m_trim_threshold, big), (m_top_pad, ctypes.c_int(1 << 30))))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_pate.bin.train_teacher_heads",
                                description="Train every teacher's decoder and joint network in one process.")
    p.add_argument("--public", required=True, help="public model's experiment directory (config.yaml + model)")
    p.add_argument("--shards", required=True, help="directory of shard_<k> Kaldi directories")
    p.add_argument("--valid", required=True, help="Kaldi directory every teacher validates on")
    p.add_argument("--out", required=True, help="output directory for teacher_<k>/")
    p.add_argument("--config", required=True, help="training YAML (conf/train_teacher_heads.yaml)")
    p.add_argument("--num-teachers", type=int, default=None, help="use shard_0..K-1 only (default: every shard)")
    p.add_argument("--teacher-chunk", type=int, default=None, help="teachers per forward pass (config: teacher_chunk)")
    p.add_argument("--model-file", default="valid.loss.ave.pth", help="public model file in --public")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not keep_freed_memory():
        logging.info("glibc's mallopt not available: freed memory goes back to the system (slower steps)")
    try:
        config = load_train_config(args.config)
        if args.teacher_chunk:
            config["teacher_chunk"] = args.teacher_chunk
        shards = shard_dirs_in(Path(args.shards), args.num_teachers)
        train_teacher_heads(args.public, shards, args.valid, args.out, config, model_file=args.model_file,
                            progress=lambda msg: print(msg, flush=True))
    except (KaldiDirError, FileNotFoundError, ValueError) as e:
        print(f"train_teacher_heads: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
