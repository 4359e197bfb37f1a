"""Choosing and validating the self-reward token z (spec §1, §7.3).

LaSeR reads log π(z | x, y, EOS) for a token z the model never emits. That only works if z is
(a) a single token, (b) not EOS, pad or any stop id — the sampler suppresses z, so a stop id as z
would make responses unable to end, and EOS/pad positions are how batches are delimited — and
(c) a token the model has (almost) never seen: a special token that neither the chat template nor
the training data writes. An ordinary text token would have a large, input-dependent
probability, breaking the "practically constant" reference assumption behind c_ref.

``auto`` picks the first free special token, preferring names that announce an unused slot
(``reserved``, ``unused``) and then multimodal markers a text model never produced (``vision``,
``image``, …); ties go to the lowest id. On Qwen2.5 that is ``<|vision_start|>``, on Llama-3
``<|reserved_special_token_0|>`` — the paper's choices — with no id written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.integrations.hf import token_id_or_none

#: Name fragments of special tokens that are safe choices for z, most preferred first.
PREFERRED_FRAGMENTS: tuple[str, ...] = (
    "reserved",
    "unused",
    "vision",
    "image",
    "video",
    "audio",
    "extra",
    "box",
    "quad",
    "object_ref",
)
#: The token added by ``add_if_missing`` when the tokenizer has no free special token.
ADDED_TOKEN = "<|laser_z|>"

_ROLE_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def parse_token_arg(value: str | int) -> str | int:
    """CLI value → token: ``auto``, an id (all digits) or a token string."""
    if isinstance(value, int) or value == "auto":
        return value
    text = str(value)
    return int(text) if text.isdigit() else text


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of tokens the tokenizer marks special (named special tokens and special added tokens)."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _added_ids(tokenizer: Any) -> set[int]:
    """Ids of every added token (special or not): atomic tokens that are never split or merged."""
    return {int(i) for i in (getattr(tokenizer, "added_tokens_decoder", {}) or {})} | _special_ids(tokenizer)


def _role_ids(tokenizer: Any) -> set[int]:
    ids = set()
    for attr in _ROLE_ATTRIBUTES:
        i = getattr(tokenizer, f"{attr}_id", None)
        if isinstance(i, int):
            ids.add(i)
    return ids


def _template_text(tokenizer: Any, chat_template_text: str | None) -> str:
    if chat_template_text is not None:
        return chat_template_text
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(v) for v in template.values())
    return template or ""


def _rendered_ids(tokenizer: Any) -> set[int]:
    """Ids a rendered conversation contains: catches tokens a template builds without spelling them."""
    if not getattr(tokenizer, "chat_template", None):
        return set()
    conversation = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u"},
    ]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except Exception:  # some templates refuse a system turn; retry without it
        try:
            text = tokenizer.apply_chat_template(conversation[1:], tokenize=False, add_generation_prompt=True)
        except Exception:
            return set()
    return {int(i) for i in tokenizer.encode(text, add_special_tokens=False)}


def _used_reason(
    token: str, token_id: int, template: str, rendered: set[int], samples: Sequence[str]
) -> str | None:
    if token and token in template:
        return "the chat template writes it"
    if token_id in rendered:
        return "a rendered chat prompt contains it"
    for i, text in enumerate(samples):
        if token and token in text:
            return f"the data uses it (sample {i})"
    return None


def validate_token_id(token_id: int, vocab_size: int, stop_ids: Iterable[int], pad_id: int | None) -> int:
    """Check z against the model: an id inside the embedding matrix that is neither a stop id nor pad.

    ``vocab_size`` is the model's embedding size (which may exceed ``len(tokenizer)``, as Qwen's does).
    """
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise LaserError(f"self-reward token id must be an integer, got {token_id!r}")
    if not 0 <= token_id < vocab_size:
        raise LaserError(
            f"self-reward token id {token_id} is outside the model's vocabulary (size {vocab_size})"
        )
    stops = {int(s) for s in stop_ids}
    if token_id in stops:
        raise LaserError(
            f"self-reward token id {token_id} is a stop id {sorted(stops)}: z is never sampled, so "
            "responses could not end with it, and z must follow EOS, not be it"
        )
    if pad_id is not None and token_id == pad_id:
        raise LaserError(f"self-reward token id {token_id} is the pad id: padding and z would be confused")
    return token_id


def select_self_reward_token(
    tokenizer: Any,
    token: str | int = "auto",
    *,
    stop_ids: Sequence[int],
    chat_template_text: str | None = None,
    data_sample_texts: Sequence[str] = (),
    force: bool = False,
    add_if_missing: bool = False,
    force_option: str | None = "force=True",
    add_option: str | None = "add_if_missing=True",
) -> tuple[str, int, bool]:
    """Pick or check z; returns ``(token_str, token_id, added)``.

    ``token``: ``"auto"``, a token string or an id. EOS, pad and stop ids are always refused. An
    ordinary text token, or a token the chat template / ``data_sample_texts`` use, is refused
    unless ``force``. A string that is not a single token is refused unless ``add_if_missing``.
    ``add_if_missing`` adds ``token`` (or :data:`ADDED_TOKEN` for ``auto`` when no special token is
    free) as a special token; ``added`` is then True and the caller MUST call
    ``model.resize_token_embeddings(len(tokenizer))`` (see :func:`resize_embeddings_if_needed`).

    ``force_option`` / ``add_option``: how the calling command spells ``force`` / ``add_if_missing``
    (``--force-token``, ``laser.add_token_if_missing=true``); error messages name them, and say
    nothing of an override the command does not offer (``None``).
    """
    stops = {int(s) for s in stop_ids}
    pad_id = tokenizer.pad_token_id
    template = _template_text(tokenizer, chat_template_text)
    rendered = _rendered_ids(tokenizer)
    samples = list(data_sample_texts)

    if token == "auto":
        free = _free_special_token(tokenizer, stops | _role_ids(tokenizer) | rendered, template, rendered, samples)
        if free is not None:
            return (*free, False)
        if not add_if_missing:
            raise LaserError(
                "no free special token for the self-reward token z (every special token is EOS, pad, a stop "
                "id or used by the chat template/data): name one"
                + (f", or set {add_option} to add {ADDED_TOKEN!r} (the model's embeddings are then resized)"
                   if add_option else "")
            )
        return _add_token(tokenizer, ADDED_TOKEN, stops, pad_id)

    token_id = _token_id(tokenizer, token, add_if_missing, add_option)
    if token_id is None:  # a string that is not a single token, and add_if_missing: add it
        return _add_token(tokenizer, str(token), stops, pad_id)
    name = tokenizer.convert_ids_to_tokens(token_id)
    _refuse_eos_pad_or_stop(tokenizer, name, token_id, stops, pad_id)
    if not force:
        _refuse_ordinary_or_used(tokenizer, name, token_id, template, rendered, samples, force_option)
    return name, token_id, False


def _free_special_token(
    tokenizer: Any, blocked: set[int], template: str, rendered: set[int], samples: Sequence[str]
) -> tuple[str, int] | None:
    """``auto``: the special token outside ``blocked`` that nothing uses, preferred fragment first
    (:data:`PREFERRED_FRAGMENTS`), then the lowest id; None when there is none."""
    candidates = []
    for i in sorted(_special_ids(tokenizer) - blocked):
        name = tokenizer.convert_ids_to_tokens(i)
        if name is None or _used_reason(name, i, template, rendered, samples) is not None:
            continue
        lower = name.lower()
        rank = next((r for r, frag in enumerate(PREFERRED_FRAGMENTS) if frag in lower), len(PREFERRED_FRAGMENTS))
        candidates.append((rank, i, name))
    if not candidates:
        return None
    _, i, name = min(candidates)
    return name, i


def _token_id(tokenizer: Any, token: str | int, add_if_missing: bool, add_option: str | None) -> int | None:
    """The id a named ``token`` (an id or a string) has in the tokenizer; None for a string that is not a
    single token when ``add_if_missing`` (the caller adds it)."""
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise LaserError(f"self-reward token must be 'auto', a token string or an id, got {token!r}")
    if isinstance(token, int):
        if not 0 <= token < len(tokenizer):
            raise LaserError(
                f"self-reward token id {token} is outside the tokenizer's vocabulary (size {len(tokenizer)})"
            )
        return token
    if not token:
        raise LaserError("self-reward token: empty string")
    vocab_id = token_id_or_none(tokenizer, token)
    if vocab_id is not None:
        return int(vocab_id)
    try:
        ids = tokenizer.encode(token, add_special_tokens=False)
        problem = f"it encodes to {len(ids)} tokens {ids}"
    except Exception as e:  # noqa: BLE001 - tokenizers raise bare Exceptions (no [UNK] in a word vocabulary)
        ids, problem = [], f"the tokenizer cannot encode it ({e})"
    if len(ids) == 1:
        return int(ids[0])
    if add_if_missing:
        return None
    raise LaserError(
        f"self-reward token {token!r} is not a single token: {problem}; name a special "
        "token of the tokenizer" + (f" (or set {add_option} to add it as a new token)" if add_option else "")
    )


def _refuse_eos_pad_or_stop(tokenizer: Any, name: str, token_id: int, stops: set[int], pad_id: int | None) -> None:
    """z follows EOS and is never sampled: it cannot be EOS, pad or a stop id, whatever ``force`` says."""
    if token_id == tokenizer.eos_token_id:
        raise LaserError(
            f"self-reward token {name!r} (id {token_id}) is the EOS token; z must follow EOS, not be it"
        )
    if pad_id is not None and token_id == pad_id:
        raise LaserError(f"self-reward token {name!r} (id {token_id}) is the pad token")
    if token_id in stops:
        raise LaserError(
            f"self-reward token {name!r} (id {token_id}) is a stop id {sorted(stops)}; z is never sampled, "
            "so responses could not end"
        )


def _refuse_ordinary_or_used(
    tokenizer: Any,
    name: str,
    token_id: int,
    template: str,
    rendered: set[int],
    samples: Sequence[str],
    force_option: str | None,
) -> None:
    """An ordinary text token, or one the chat template or data use, would not have a constant
    log-prob after EOS (c_ref would not hold); ``force`` skips this check."""
    override = f" (or pass {force_option} to override)" if force_option else ""
    if token_id not in _added_ids(tokenizer):
        raise LaserError(
            f"self-reward token {name!r} (id {token_id}) is an ordinary text token: its probability after "
            "EOS depends on the input, so c_ref would not be a constant; choose a special token" + override
        )
    reason = _used_reason(name, token_id, template, rendered, samples)
    if reason is not None:
        raise LaserError(f"self-reward token {name!r} (id {token_id}) is not unused: {reason}; choose another" + override)


def _add_token(tokenizer: Any, token: str, stops: set[int], pad_id: int | None) -> tuple[str, int, bool]:
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id in stops or token_id == pad_id:
        raise LaserError(f"could not add {token!r} as a new self-reward token")
    return token, int(token_id), True


def resize_embeddings_if_needed(model: Any, tokenizer: Any) -> bool:
    """Grow the model's embeddings to ``len(tokenizer)`` after a token was added; True if it resized."""
    size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= size:
        return False
    model.resize_token_embeddings(len(tokenizer))
    return True
