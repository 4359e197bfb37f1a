"""A character-level tokenizer for the embedded arithmetic task.

Built with the ``tokenizers`` library (a WordLevel model over single characters, with a pre-tokenizer
that isolates every character) and wrapped as a ``PreTrainedTokenizerFast`` so it is saved and loaded
exactly like a hub tokenizer (``save_pretrained`` / ``AutoTokenizer.from_pretrained``): every later
command treats the embedded model as an ordinary Hugging Face model.

Special tokens: ``<pad>`` (padding), ``<eos>`` (end of response, the stop token) and ``<z>``, the
LaSeR self-reward token. ``<z>`` is never produced by the data (no task text contains ``<``), so
log π(z | x, y, EOS) starts as a vanishing probability, as the method requires. Nothing outside this
module knows any token id: read them from the tokenizer (``tokenizer.convert_tokens_to_ids``,
``tokenizer.eos_token_id``...).

Encoding adds no BOS/EOS (no post-processor): callers append ``eos_token_id`` to SFT targets
themselves. Characters outside the alphabet are an error, not a silent ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
Z_TOKEN = "<z>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, Z_TOKEN)
#: The characters the arithmetic task writes (digits, operators, step separators, answer marker).
DEFAULT_ALPHABET = "0123456789+-=;#"


def build_char_tokenizer(alphabet: Iterable[str] = DEFAULT_ALPHABET) -> Any:
    """Build the character tokenizer as a ``PreTrainedTokenizerFast``.

    ``alphabet``: the ordinary (non-special) characters, one token each, in id order after the
    specials. Raises ``ValueError`` on duplicates, multi-character entries or a clash with a special.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(alphabet)
    if len(set(chars)) != len(chars):
        raise ValueError(f"alphabet has duplicate characters: {''.join(chars)!r}")
    for c in chars:
        if len(c) != 1 or c.isspace():
            raise ValueError(f"alphabet entries must be single non-space characters, got {c!r}")
    if any(c in s for c in chars for s in SPECIAL_TOKENS if c in "<>"):
        raise ValueError("alphabet must not contain '<' or '>' (they delimit the special tokens)")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}

    # No unk_token: an unknown character raises instead of silently becoming a token the model
    # was never trained on.
    tok = Tokenizer(models.WordLevel(vocab=vocab))
    # "isolated" splits the text into single characters ("[\s\S]" also matches a newline, so it too
    # reaches the model lookup and is rejected there rather than being dropped).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate characters back without spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=[Z_TOKEN],
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without any special token added (works for any HF tokenizer)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def z_token_id(tokenizer: Any, token: str = Z_TOKEN) -> int:
    """The id of the self-reward token, checked to be a real special token distinct from EOS/pad."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id and tokenizer.unk_token != token:
        raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
    if tid in {tokenizer.eos_token_id, tokenizer.pad_token_id}:
        raise ValueError(f"token {token!r} must differ from the EOS and pad tokens")
    return int(tid)
