"""Hugging Face models and tokenizers: loading, THE prompt builder, and the choice of stop ids.

Training and evaluation must see the same prompt for the same problem, or the self-reward learnt
in training is read off a different distribution at test time; both therefore call
:func:`build_prompt` / :func:`build_prompts` here and nowhere else (spec §4).

Stop ids are derived from the tokenizer, its chat template and the model folder's
``generation_config.json`` — never hard-coded — because a chat-formatted base model ends its turn
with a template token (``<|im_end|>``, ``<|eot_id|>``) that differs from its EOS (spec §7.2).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser_rl.errors import LaserError
from laser_rl.io import is_local_path
from laser_rl.tasks.base import PromptStyle

if TYPE_CHECKING:
    import torch

#: Spec §4: appended to every problem in chat style (leading space included).
SPEC_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."

#: Tokens that end an assistant turn in common chat templates; used as stop ids when the template
#: writes them and the vocabulary has them.
END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
#: Tokens that end a document; a model that emits one has finished whatever the template says.
END_OF_TEXT_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|end_of_text|>")

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# loading


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """Raise ``LaserError`` listing what a local model folder lacks (config.json, weights, shards)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LaserError(
            f"model folder {folder} not found" if not folder.exists() else f"{folder} is not a folder"
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    weights = [f for f in _WEIGHT_FILES if (folder / f).is_file()] or sorted(
        p.name for p in folder.glob("*.safetensors")
    )
    if not weights:
        missing.append("weights (" + " or ".join(_WEIGHT_FILES[::2]) + ", or sharded *.safetensors)")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise LaserError(f"{folder / index}: invalid weight index ({e})") from None
            missing += sorted(f"weight shard {s}" for s in shards if not (folder / s).is_file())
    if missing:
        raise LaserError(f"model folder {folder} is missing: " + ", ".join(missing))
    return folder


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise LaserError(f"--device: unknown device {device!r}") from None


_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """``auto`` → bfloat16 on a CUDA device that supports it, float32 otherwise (CPU, MPS, old GPUs)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = resolve_device(device)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise LaserError(f"--dtype: unknown dtype {dtype!r} (choose auto, {', '.join(sorted(_DTYPES))})")
    return getattr(torch, name)


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """A causal LM from a local folder (offline) or a hub id, on ``device`` in ``dtype``, in eval mode.

    A local folder is checked first so that a missing ``config.json`` or weight file is reported
    as such instead of as a hub lookup failure. On an accelerator the weights are loaded straight
    onto ``device`` (``device_map``), so eight processes of a multi-GPU run do not each stage a
    full copy in CPU memory first.
    """
    from transformers import AutoModelForCausalLM

    local = is_local_path(path)
    src = str(check_model_folder(path)) if local else os.fspath(path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    placement: dict[str, Any] = {"device_map": {"": dev}} if dev.type != "cpu" else {}
    if attn_implementation is not None:
        placement["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=local, **placement
        )
    except (OSError, ValueError, KeyError) as e:
        if local:
            raise LaserError(f"model folder {src}: cannot load a causal LM ({e})") from None
        raise LaserError(f"{src}: no such folder, and loading it as a hub model id failed ({e})") from None
    return model.to(dev).eval()


def config_vocab_size(path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> int:
    """The model's vocabulary size from its config alone (no weights loaded): cheap checks of a
    token id can run before a multi-gigabyte model load."""
    from transformers import AutoConfig

    local = is_local_path(path)
    src = str(check_model_folder(path)) if local else os.fspath(path)
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        raise LaserError(f"{src}: cannot read the model's config ({e})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise LaserError(f"{src}: the model's config has no vocab_size")
    return vocab


def disable_progress_bars() -> None:
    """Silence transformers' own loading/saving bars (``--quiet``, or when a command draws its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> Any:
    """A tokenizer with an EOS token and a pad token.

    No EOS → ``LaserError`` (nothing could end a response). No pad → pad := EOS, with a warning, and
    ``tokenizer.laser_pad_from_eos = True`` records it: code must then find EOS from the response
    mask, never from pad positions (spec §7.2).
    """
    from transformers import AutoTokenizer

    local = is_local_path(path)
    src = os.fspath(Path(path).expanduser()) if local else os.fspath(path)
    if local:
        folder = Path(src)
        if not folder.is_dir():
            raise LaserError(f"tokenizer folder {folder} not found")
        if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            raise LaserError(
                f"tokenizer folder {folder} is missing a tokenizer: none of {', '.join(_TOKENIZER_FILES)}"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            src, trust_remote_code=trust_remote_code, local_files_only=local
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        where = f"tokenizer folder {src}" if local else f"{src} (no such folder; tried as a hub id)"
        raise LaserError(f"{where}: cannot load the tokenizer ({e})") from None
    if tokenizer.eos_token_id is None:
        raise LaserError(
            f"{src}: the tokenizer defines no EOS token (set eos_token in tokenizer_config.json): "
            "responses could never end"
        )
    tokenizer.laser_pad_from_eos = False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.laser_pad_from_eos = True
        _warn_once(
            f"pad:{src}", f"{src}: the tokenizer has no pad token; using EOS {tokenizer.eos_token!r} as pad"
        )
    return tokenizer


# --------------------------------------------------------------------------------------------
# prompts (spec §4)


def _chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is what apply_chat_template uses
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Plain-text prompt ids with the tokenizer's usual BOS (if it adds one) but never a trailing EOS."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if (
        ids
        and tokenizer.eos_token_id is not None
        and ids[-1] == tokenizer.eos_token_id
        and not text.endswith(tokenizer.eos_token)
    ):
        ids.pop()
    return ids


def build_prompts(
    tokenizer: Any,
    problems: Sequence[str],
    style: PromptStyle,
    instruction: str = SPEC_INSTRUCTION,
    *,
    system: str | None = None,
) -> list[list[int]]:
    """Prompt token ids for many problems; the batched form of :func:`build_prompt` (same output).

    ``chat``: the user turn ``problem + instruction`` in the model's chat template with the
    assistant header (``add_generation_prompt=True``); without a template, the plain text
    ``problem + instruction`` (warned once). ``raw``: ``problem`` as is, no special tokens, no
    instruction (the embedded task's character tokenizer).
    """
    if style == "raw":
        if not problems:
            return []
        return [list(ids) for ids in tokenizer(list(problems), add_special_tokens=False)["input_ids"]]
    if style != "chat":
        raise LaserError(f"prompt style must be 'raw' or 'chat', got {style!r}")
    texts = [p + instruction for p in problems]
    template = _chat_template(tokenizer)
    if template is None:
        _warn_once(
            f"template:{getattr(tokenizer, 'name_or_path', '')}",
            "the tokenizer has no chat template; chat-style prompts are plain text (problem + instruction)",
        )
        return [_encode_plain(tokenizer, t) for t in texts]
    if not texts:
        return []
    head = [{"role": "system", "content": system}] if system is not None else []
    conversations = [[*head, {"role": "user", "content": t}] for t in texts]
    try:
        rendered = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja errors carry no useful type
        raise LaserError(f"the tokenizer's chat template failed to render a prompt: {e}") from None
    return [list(ids) for ids in tokenizer(list(rendered), add_special_tokens=False)["input_ids"]]


def build_prompt(
    tokenizer: Any,
    problem: str,
    style: PromptStyle,
    instruction: str = SPEC_INSTRUCTION,
    *,
    system: str | None = None,
) -> list[int]:
    """Prompt token ids for one problem: THE prompt builder shared by training and evaluation (spec §4)."""
    return build_prompts(tokenizer, [problem], style, instruction, system=system)[0]


# --------------------------------------------------------------------------------------------
# stop ids


def token_id_or_none(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` as one vocabulary entry, or ``None`` (never silently the unk id).

    Cheaper than ``get_vocab()``, which copies a 150k-entry dict on every call.
    """
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def _single_token_id(tokenizer: Any, token: str | int, what: str) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < len(tokenizer):
            raise LaserError(f"{what}: token id {token} is outside the vocabulary (size {len(tokenizer)})")
        return token
    vocab_id = token_id_or_none(tokenizer, token)
    if vocab_id is not None:
        return vocab_id
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise LaserError(f"{what}: {token!r} is not a single token (it encodes to {len(ids)} tokens: {ids})")
    return int(ids[0])


def _template_end_of_turn(tokenizer: Any, template: str) -> int | None:
    """The added token the template writes right after an assistant message's content, if any."""
    marker = "LASERENDPROBE"
    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": marker}]
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # a template may refuse a conversation shape; the name list still applies
        return None
    cut = rendered.rfind(marker)
    if cut < 0:
        return None
    rest = rendered[cut + len(marker) :]
    ids = tokenizer.encode(rest, add_special_tokens=False) if rest else []
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    return int(ids[0]) if ids and ids[0] in added else None


def generation_config_eos_ids(folder: str | os.PathLike[str]) -> list[int]:
    """``eos_token_id`` (an int or a list) from ``folder/generation_config.json``; [] when absent."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise LaserError(f"{path}: invalid generation config ({e})") from None
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def resolve_stop_ids(
    tokenizer: Any,
    extra_stop_tokens: Iterable[str | int] = (),
    *,
    model_path: str | os.PathLike[str] | None = None,
) -> list[int]:
    """Every token id that ends a response, EOS first, without duplicates.

    EOS; the token the chat template writes after an assistant message (derived by rendering one)
    and the known end-of-turn tokens the template uses; end-of-text tokens the vocabulary defines
    as special; ``eos_token_id`` from ``generation_config.json`` in ``model_path`` (default: the
    folder the tokenizer was loaded from); and ``extra_stop_tokens`` (strings or ids, single tokens).
    """
    if tokenizer.eos_token_id is None:
        raise LaserError("the tokenizer defines no EOS token: responses could never end")
    stops: list[int] = [int(tokenizer.eos_token_id)]
    vocab = {
        t: i
        for t in (*END_OF_TURN_TOKENS, *END_OF_TEXT_TOKENS)
        if (i := token_id_or_none(tokenizer, t)) is not None
    }
    special = set(tokenizer.all_special_ids) | {
        i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if t.special
    }
    template = _chat_template(tokenizer)
    if template is not None:
        end = _template_end_of_turn(tokenizer, template)
        if end is not None:
            stops.append(end)
        stops += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in template]
    stops += [vocab[t] for t in END_OF_TEXT_TOKENS if t in vocab and vocab[t] in special]
    folder = model_path if model_path is not None else getattr(tokenizer, "name_or_path", None)
    if folder and Path(folder).is_dir():
        stops += [i for i in generation_config_eos_ids(folder) if 0 <= i < len(tokenizer)]
    stops += [_single_token_id(tokenizer, t, "stop token") for t in extra_stop_tokens]
    return list(dict.fromkeys(int(s) for s in stops))
