"""Self-reward token selection and validation on the real Qwen2.5 tokenizer and a Llama-3-style one."""

from __future__ import annotations

import pytest

from laser_rl.errors import LaserError
from laser_rl.integrations.hf import resolve_stop_ids
from laser_rl.integrations.qwen_tokenizer import build_qwen25_tokenizer
from laser_rl.integrations.special_token import (
    ADDED_TOKEN,
    parse_token_arg,
    resize_embeddings_if_needed,
    select_self_reward_token,
    validate_token_id,
)

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def byte_level_tokenizer(
    specials: list[str],
    *,
    eos: str | None,
    pad: str | None = None,
    bos: str | None = None,
    template: str | None = None,
):
    """A byte-level tokenizer (256 byte tokens, no merges) followed by ``specials`` as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos)
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def qwen():
    return build_qwen25_tokenizer()


@pytest.fixture(scope="module")
def qwen_stops(qwen):
    return resolve_stop_ids(qwen)


def test_auto_picks_vision_start_on_qwen25(qwen, qwen_stops):
    assert select_self_reward_token(qwen, "auto", stop_ids=qwen_stops) == ("<|vision_start|>", 151652, False)


def test_auto_picks_reserved_token_0_on_llama3_style_tokenizer():
    tok = byte_level_tokenizer(
        LLAMA3_SPECIALS, eos="<|end_of_text|>", bos="<|begin_of_text|>", template=LLAMA3_TEMPLATE
    )
    stops = resolve_stop_ids(tok)
    assert set(stops) == {
        tok.convert_tokens_to_ids("<|end_of_text|>"),
        tok.convert_tokens_to_ids("<|eot_id|>"),
    }
    name, token_id, added = select_self_reward_token(tok, "auto", stop_ids=stops)
    assert (name, added) == ("<|reserved_special_token_0|>", False)
    assert token_id == 256 + LLAMA3_SPECIALS.index("<|reserved_special_token_0|>")


def test_auto_skips_tokens_used_by_template_or_data(qwen, qwen_stops):
    # A template that writes <|vision_start|>, and data that writes <|vision_end|>: next vision token.
    name, token_id, _ = select_self_reward_token(
        qwen,
        "auto",
        stop_ids=qwen_stops,
        chat_template_text="... <|vision_start|> ...",
        data_sample_texts=["plain problem", "a problem with <|vision_end|> inside"],
    )
    assert (name, token_id) == ("<|vision_pad|>", qwen.convert_tokens_to_ids("<|vision_pad|>"))
    # Stop ids are never candidates, even special ones the template does not write.
    name, _, _ = select_self_reward_token(qwen, "auto", stop_ids=[*qwen_stops, 151652])
    assert name == "<|vision_end|>"


@pytest.mark.parametrize("token", ["<|vision_start|>", 151652, "<|image_pad|>"])
def test_explicit_special_token_accepted(qwen, qwen_stops, token):
    name, token_id, added = select_self_reward_token(qwen, token, stop_ids=qwen_stops)
    assert token_id == qwen.convert_tokens_to_ids(name) and not added
    assert name == (token if isinstance(token, str) else "<|vision_start|>")


@pytest.mark.parametrize(
    "token, message",
    [
        ("<|endoftext|>", "EOS token"),  # EOS (and pad) of the base model
        (151643, "EOS token"),
        ("<|im_end|>", "stop id"),  # the chat turn end: a stop id, not EOS here
        ("<|im_start|>", "chat template writes it"),
        ("the", "ordinary text token"),
        (1782, "ordinary text token"),
        ("hello world", "not a single token"),
        (10**7, "outside"),
    ],
)
def test_bad_tokens_refused(qwen, qwen_stops, token, message):
    with pytest.raises(LaserError, match=message):
        select_self_reward_token(qwen, token, stop_ids=qwen_stops)


def test_eos_refused_even_with_force():
    tok = build_qwen25_tokenizer(instruct=True)  # EOS = <|im_end|>, pad = <|endoftext|>
    stops = resolve_stop_ids(tok)
    with pytest.raises(LaserError, match="EOS"):
        select_self_reward_token(tok, "<|im_end|>", stop_ids=stops, force=True)
    with pytest.raises(LaserError, match="pad"):
        select_self_reward_token(tok, "<|endoftext|>", stop_ids=stops, force=True)


def test_force_overrides_soft_checks_only(qwen, qwen_stops):
    assert select_self_reward_token(qwen, "the", stop_ids=qwen_stops, force=True)[:2] == ("the", 1782)
    assert select_self_reward_token(qwen, "<|im_start|>", stop_ids=qwen_stops, force=True)[1] == 151644
    with pytest.raises(LaserError, match="not unused: the data uses it"):
        select_self_reward_token(
            qwen, "<|box_start|>", stop_ids=qwen_stops, data_sample_texts=["x <|box_start|>"]
        )


def test_no_free_special_token_errors_or_adds():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_level_tokenizer(["<eos>", "<pad>"], eos="<eos>", pad="<pad>")
    stops = resolve_stop_ids(tok)
    with pytest.raises(LaserError, match="no free special token"):
        select_self_reward_token(tok, "auto", stop_ids=stops)
    size = len(tok)
    name, token_id, added = select_self_reward_token(tok, "auto", stop_ids=stops, add_if_missing=True)
    assert (name, token_id, added) == (ADDED_TOKEN, size, True) and len(tok) == size + 1
    assert tok.encode("a" + ADDED_TOKEN, add_special_tokens=False) == [
        tok.convert_tokens_to_ids("a"),
        token_id,
    ]
    # Once added, the next selection finds it as an ordinary free special token.
    assert select_self_reward_token(tok, "auto", stop_ids=stops) == (ADDED_TOKEN, token_id, False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=size,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    assert resize_embeddings_if_needed(model, tok) is True
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert resize_embeddings_if_needed(model, tok) is False


def test_multi_token_string_added_when_allowed():
    tok = byte_level_tokenizer(["<eos>"], eos="<eos>")
    name, token_id, added = select_self_reward_token(tok, "<my_z>", stop_ids=[0], add_if_missing=True)
    assert (name, added) == ("<my_z>", True) and tok.convert_ids_to_tokens(token_id) == "<my_z>"


def test_validate_token_id():
    assert validate_token_id(5, vocab_size=10, stop_ids=[1, 2], pad_id=0) == 5
    for bad, msg in [
        (10, "outside"),
        (-1, "outside"),
        (2, "stop id"),
        (0, "pad id"),
        (True, "integer"),
        ("5", "integer"),
    ]:
        with pytest.raises(LaserError, match=msg):
            validate_token_id(bad, vocab_size=10, stop_ids=[1, 2], pad_id=0)


def test_parse_token_arg():
    assert parse_token_arg("auto") == "auto"
    assert parse_token_arg("151652") == 151652
    assert parse_token_arg("<|vision_start|>") == "<|vision_start|>"
