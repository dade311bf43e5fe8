"""The recipe's tokenizer: a sentencepiece model and ESPnet's token list, both from public transcripts only.

The token list follows ESPnet's asr.sh convention for transducers: `<blank>` at 0, `<unk>` at 1, the pieces by
frequency, `<sos/eos>` last.
"""
from __future__ import annotations

import os
from pathlib import Path

import sentencepiece as spm

from espnet_pate.data.kaldi_dir import read_table


def train_tokenizer(text_file: os.PathLike | str, out_dir: os.PathLike | str, vocab_size: int = 100,
                    model_type: str = "unigram") -> Path:
    """Train `out_dir/bpe.model` on the transcripts of a Kaldi `text` file; write `out_dir/tokens.txt`."""
    from espnet2.bin.tokenize_text import tokenize  # heavy import: only here

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = out_dir / "train.txt"
    sentences.write_text("".join(t + "\n" for t in read_table(text_file).values()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(sentences), vocab_size=vocab_size, model_type=model_type, model_prefix=str(out_dir / "bpe"),
        character_coverage=1.0, input_sentence_size=100_000_000, bos_id=-1, eos_id=-1, unk_id=0,
        minloglevel=2,
    )
    tokenize(
        input=str(sentences), output=str(out_dir / "tokens.txt"), field=None, delimiter=None, token_type="bpe",
        space_symbol="<space>", non_linguistic_symbols=None, bpemodel=str(out_dir / "bpe.model"),
        log_level="WARNING", write_vocabulary=True, vocabulary_size=0, remove_non_linguistic_symbols=False,
        cutoff=0, add_symbol=["<blank>:0", "<unk>:1", "<sos/eos>:-1"], cleaner=None, g2p=None,
        add_nonsplit_symbol=[],
    )
    return out_dir / "tokens.txt"
