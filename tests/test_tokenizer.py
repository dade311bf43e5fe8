"""espnet_pate.asr.tokenizer: the token list (char or bpe) comes from the public text alone, in ESPnet's layout."""
import pytest

from espnet_pate.asr.tokenizer import train_tokenizer

SENTENCES = ["set an alarm for seven", "what is the weather today", "play some music", "call my mother now",
             "remind me to buy milk", "convert ten miles to kilometres"] * 20
TEXT = "".join(f"pub-{i:03d} {s}\n" for i, s in enumerate(SENTENCES))


@pytest.fixture
def public_text(tmp_path):
    (tmp_path / "text").write_text(TEXT)
    return tmp_path / "text"


def test_char_token_list_is_espnet_layout_and_public_characters_only(public_text, tmp_path):
    tokens = train_tokenizer(public_text, tmp_path / "char", token_type="char").read_text().split("\n")[:-1]
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert set(tokens[2:-1]) == set("".join(SENTENCES).replace(" ", "")) | {"<space>"}
    assert not (tmp_path / "char" / "bpe.model").exists()


def test_char_tokens_round_trip_through_espnet(public_text, tmp_path):
    from espnet2.text.build_tokenizer import build_tokenizer
    from espnet2.text.token_id_converter import TokenIDConverter

    tokens = train_tokenizer(public_text, tmp_path / "char", token_type="char")
    tok, conv = build_tokenizer("char"), TokenIDConverter(str(tokens))
    ids = conv.tokens2ids(tok.text2tokens("call my mother"))
    assert 1 not in ids  # no <unk>
    assert tok.tokens2text(conv.ids2tokens(ids)) == "call my mother"


def test_bpe_writes_the_sentencepiece_model(public_text, tmp_path):
    tokens = train_tokenizer(public_text, tmp_path / "bpe", vocab_size=40, token_type="bpe")
    assert (tmp_path / "bpe" / "bpe.model").exists()
    assert tokens.read_text().split("\n")[0] == "<blank>"


def test_unknown_token_type_is_refused(public_text, tmp_path):
    with pytest.raises(ValueError, match="token type"):
        train_tokenizer(public_text, tmp_path / "word", token_type="word")
