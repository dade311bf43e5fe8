"""Build the recipe's token list (ESPnet's char tokens, or a sentencepiece model and its pieces) on public
transcripts.

    python -m espnet_pate.bin.train_tokenizer --text data/public_labeled/text --token-type char \
        --out-dir dump/token_list/char
    python -m espnet_pate.bin.train_tokenizer --text data/public_labeled/text --token-type bpe --vocab-size 100 \
        --out-dir dump/token_list/bpe_unigram100
"""
import argparse

from espnet_pate.asr.tokenizer import TOKEN_TYPES, train_tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="Kaldi text file of PUBLIC transcripts")
    p.add_argument("--token-type", default="bpe", choices=TOKEN_TYPES)
    p.add_argument("--vocab-size", type=int, default=100, help="sentencepiece vocabulary size (bpe only)")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"],
                   help="sentencepiece model type (bpe only)")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    print(train_tokenizer(a.text, a.out_dir, a.vocab_size, a.model_type, a.token_type))


if __name__ == "__main__":
    main()
