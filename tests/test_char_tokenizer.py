"""The embedded task's character tokenizer: round trip through save/load, specials, no z in data."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from laser_rl.tasks.arith import ArithConfig, held_out_problems, solution, train_problem
from laser_rl.tasks.char_tokenizer import (
    DEFAULT_ALPHABET,
    EOS_TOKEN,
    PAD_TOKEN,
    Z_TOKEN,
    build_char_tokenizer,
    encode_texts,
    z_token_id,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = build_char_tokenizer()
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return tok, AutoTokenizer.from_pretrained(folder)


def test_vocabulary_is_specials_plus_alphabet(saved):
    tok, loaded = saved
    for t in (tok, loaded):
        vocab = t.get_vocab()
        assert set(vocab) == {PAD_TOKEN, EOS_TOKEN, Z_TOKEN, *DEFAULT_ALPHABET}
        assert len(t) == 3 + len(DEFAULT_ALPHABET) == 18
        assert sorted(vocab.values()) == list(range(len(vocab)))


def test_specials_present_distinct_and_survive_reload(saved):
    tok, loaded = saved
    ids = {t.pad_token_id for t in (tok, loaded)} | {t.eos_token_id for t in (tok, loaded)}
    assert loaded.pad_token == PAD_TOKEN and loaded.eos_token == EOS_TOKEN
    assert loaded.pad_token_id == tok.pad_token_id and loaded.eos_token_id == tok.eos_token_id
    z = z_token_id(loaded)
    assert z == z_token_id(tok) == loaded.convert_tokens_to_ids(Z_TOKEN)
    assert len({loaded.pad_token_id, loaded.eos_token_id, z}) == 3 and z not in ids
    assert Z_TOKEN in loaded.all_special_tokens and z in loaded.all_special_ids


def test_encode_decode_round_trip_without_added_tokens(saved):
    tok, loaded = saved
    text = "63-15+43+75=63-15=48;48+43=91;91+75=166;#166"
    ids = loaded(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no BOS/EOS added
    assert loaded.eos_token_id not in ids and loaded.pad_token_id not in ids
    assert loaded.decode(ids) == text  # no spaces inserted between characters
    with_eos = ids + [loaded.eos_token_id]
    assert loaded.decode(with_eos, skip_special_tokens=True) == text
    assert loaded.decode(with_eos) == text + EOS_TOKEN
    assert [loaded.convert_ids_to_tokens(i) for i in ids] == list(text)


def test_unknown_characters_are_rejected_not_mapped(saved):
    _, loaded = saved
    for bad in ("1 2", "x", "1\n2"):
        with pytest.raises(Exception, match="UNK|unk"):
            loaded(bad)


def test_z_never_appears_in_task_data(saved):
    _, loaded = saved
    z = z_token_id(loaded)
    cfg = ArithConfig(no_negative=False)
    problems = held_out_problems(ArithConfig())[:300] + [train_problem(cfg, 3, i) for i in range(300)]
    texts = [p.problem for p in problems] + [solution(p.problem) for p in problems]
    for ids in encode_texts(loaded, texts):
        assert z not in ids
        assert loaded.pad_token_id not in ids and loaded.eos_token_id not in ids


def test_z_token_id_validates():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="differ"):
        z_token_id(tok, EOS_TOKEN)
    with pytest.raises(ValueError):
        build_char_tokenizer("0012")
