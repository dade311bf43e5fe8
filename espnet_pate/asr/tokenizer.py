"""The recipe's token inventory: ESPnet's token list (and for BPE a sentencepiece model), from public transcripts only.

The token list follows ESPnet's asr.sh convention for transducers: `<blank>` at 0, `<unk>` at 1, the tokens by
frequency, `<sos/eos>` last. `char` tokens are ESPnet's CharTokenizer (`<space>` between words); `bpe` tokens are
pieces of a sentencepiece model trained on the same text (`out_dir/bpe.model`).
"""
from __future__ import annotations

import os
from pathlib import Path

from espnet_pate.data.kaldi_dir import read_table

TOKEN_TYPES = ("char", "bpe")


def train_tokenizer(text_file: os.PathLike | str, out_dir: os.PathLike | str, vocab_size: int = 100,
                    model_type: str = "unigram", token_type: str = "bpe") -> Path:
    """Write `out_dir/tokens.txt` from the transcripts of a Kaldi `text` file (for `bpe`, train `out_dir/bpe.model`
    first; `vocab_size` and `model_type` are sentencepiece's and ignored for `char`)."""
    from espnet2.bin.tokenize_text import tokenize  # heavy import: only here

    if token_type not in TOKEN_TYPES:
        raise ValueError(f"token type must be one of {TOKEN_TYPES}, got {token_type!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = out_dir / "train.txt"
    sentences.write_text("".join(t + "\n" for t in read_table(text_file).values()), encoding="utf-8")
    bpemodel = None
    if token_type == "bpe":
        import sentencepiece as spm

        spm.SentencePieceTrainer.train(
            input=str(sentences), vocab_size=vocab_size, model_type=model_type, model_prefix=str(out_dir / "bpe"),
            character_coverage=1.0, input_sentence_size=100_000_000, bos_id=-1, eos_id=-1, unk_id=0,
            minloglevel=2,
        )
        bpemodel = str(out_dir / "bpe.model")
    tokenize(
        input=str(sentences), output=str(out_dir / "tokens.txt"), field=None, delimiter=None, token_type=token_type,
        space_symbol="<space>", non_linguistic_symbols=None, bpemodel=bpemodel,
        log_level="WARNING", write_vocabulary=True, vocabulary_size=0, remove_non_linguistic_symbols=False,
        cutoff=0, add_symbol=["<blank>:0", "<unk>:1", "<sos/eos>:-1"], cleaner=None, g2p=None,
        add_nonsplit_symbol=[],
    )
    return out_dir / "tokens.txt"
