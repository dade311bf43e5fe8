"""Train the recipe's sentencepiece tokenizer and ESPnet token list on public transcripts.

    python -m espnet_pate.bin.train_tokenizer --text data/public_labeled/text --vocab-size 100 \
        --out-dir dump/token_list/bpe_unigram100
"""
import argparse

from espnet_pate.asr.tokenizer import train_tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="Kaldi text file of PUBLIC transcripts")
    p.add_argument("--vocab-size", type=int, default=100)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    print(train_tokenizer(a.text, a.out_dir, a.vocab_size, a.model_type))


if __name__ == "__main__":
    main()
