"""Math problems from files: JSONL, JSON, parquet, Hugging Face ``datasets`` folders and hub names.

Accepted ``--data`` specs:

- ``train.jsonl`` / ``train.json`` / ``train.parquet``: one problem per record;
- a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict``; pick a split with
  ``folder:split``, default ``train``), or a folder of ``*.jsonl`` / ``*.parquet`` files;
- ``hf:owner/name[:split]`` or a bare ``owner/name`` that is not written like a local path
  (:func:`laser_rl.io.is_local_path`: no data-file suffix, no local ``owner`` folder):
  ``datasets.load_dataset`` (needs the network). A missing local path fails at once ("not found").

Columns: ``problem`` and ``answer`` by default (``problem_key`` / ``answer_key`` rename them).
The reference pipeline's layout (verl parquet: ``prompt`` = chat messages, answer in
``reward_model.ground_truth``) is recognised by its columns (``prompt`` and ``reward_model`` present,
the configured problem column absent), whatever ``answer_key`` says: the problem is the
last user message, with the spec §4 instruction suffix removed — the prompt builder adds it back, so
keeping it would double it.

``Problem.meta`` keeps numeric columns and short id/level-like text columns (``id``, ``level``,
``subject``, ``difficulty``, ...) plus ``source`` (``file:line`` or ``file: row N``); other text
columns, such as DeepMath-103K's long R1 solutions, are not even read from parquet/datasets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laser_rl.errors import LaserError
from laser_rl.io import DATA_FILE_SUFFIXES, is_local_path, read_jsonl
from laser_rl.tasks.base import Problem, TaskData

#: Spec §4's instruction (kept equal to ``laser_rl.integrations.hf.SPEC_INSTRUCTION``, not imported
#: so that loading data does not import the model stack).
_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."
_OPTIONS = ("split", "limit", "instruction", "verifier", "name")
#: Options the embedded task uses (the trainer/evaluator may pass them for any --data); ignored here.
_IGNORED_OPTIONS = ("task_file", "model_dir")


#: String columns worth keeping as problem metadata (ids, difficulty); other string columns (solutions)
#: are not read at all from parquet/datasets, which keeps DeepMath-103K's R1 solutions out of memory.
_META_COLUMNS = ("id", "unique_id", "level", "subject", "difficulty", "topic", "type")
_REFERENCE_META = ("data_source", "ability", "extra_info")


@dataclass
class _Table:
    """One readable unit (a file, a dataset split): its column names and a reader for a column subset."""

    where: str  # file or dataset name, for messages
    columns: list[str]
    numeric: set[str]  # columns of numeric/bool type (cheap metadata)
    read: Callable[[list[str]], list[tuple[str, dict[str, Any]]]]  # -> (where, record) pairs


def _json_table(path: Path) -> _Table:
    if path.suffix.lower() == ".jsonl":
        records = read_jsonl(path)
        # read_jsonl skips blank lines: recover line numbers for messages about individual records.
        with path.open(encoding="utf-8") as f:  # same line splitting as read_jsonl
            lines = [i for i, line in enumerate(f, start=1) if line.strip()]
        rows = [(f"{path}:{n}", r) for n, r in zip(lines, records)]
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LaserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise LaserError(f"{path}: expected a JSON list of objects (or use .jsonl)")
        rows = [(f"{path}: record {i}", r) for i, r in enumerate(data)]
    columns = list(dict.fromkeys(k for _, r in rows for k in r))
    numeric = {
        c for c in columns if all(isinstance(r.get(c), (int, float, bool, type(None))) for _, r in rows)
    }
    return _Table(str(path), columns, numeric, lambda _cols: rows)


def _parquet_table(path: Path) -> _Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LaserError(f"{path}: reading parquet needs pyarrow (pip install 'laser-rl[data]')") from None
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises its own error types
        raise LaserError(f"{path}: cannot read parquet ({e})") from None
    numeric = {
        f.name
        for f in schema
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
    }

    def read(cols: list[str]) -> list[tuple[str, dict[str, Any]]]:
        try:
            rows = pq.read_table(path, columns=cols).to_pylist()
        except Exception as e:
            raise LaserError(f"{path}: cannot read parquet ({e})") from None
        return [(f"{path}: row {i}", r) for i, r in enumerate(rows)]

    return _Table(str(path), list(schema.names), numeric, read)


def _dataset_table(dataset: Any, where: str) -> _Table:
    numeric = {
        name
        for name, feature in dataset.features.items()
        if str(getattr(feature, "dtype", "")).startswith(("int", "uint", "float", "bool"))
    }

    def read(cols: list[str]) -> list[tuple[str, dict[str, Any]]]:
        return [(f"{where}: row {i}", r) for i, r in enumerate(dataset.select_columns(cols).to_list())]

    return _Table(where, list(dataset.column_names), numeric, read)


def _file_table(path: Path) -> _Table:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _json_table(path)
    if suffix == ".parquet":
        return _parquet_table(path)
    raise LaserError(f"{path}: unsupported data file type {suffix!r} (use {', '.join(DATA_FILE_SUFFIXES)})")


def _pick_split(dataset: Any, split: str | None, where: str) -> Any:
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        if split is not None and split != "train":
            raise LaserError(f"{where}: a single dataset, no splits (asked for split {split!r})")
        return dataset
    names = list(dataset.keys())
    if split is None:
        split = "train" if "train" in names else (names[0] if len(names) == 1 else None)
    if split not in names:
        raise LaserError(f"{where}: split {split!r} not found; splits present: {', '.join(names)}")
    return dataset[split]


def _is_datasets_folder(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _open_tables(spec: str, split: str | None) -> tuple[str, list[_Table]]:
    """Resolve the spec to ``(display name, tables)``."""
    path = Path(spec).expanduser()
    if not path.exists() and ":" in spec and not spec.startswith("hf:"):
        head, _, tail = spec.rpartition(":")
        if Path(head).expanduser().exists():  # "folder:split"
            path, split = Path(head).expanduser(), tail
    if path.is_file():
        return path.name, [_file_table(path)]
    if path.is_dir():
        if _is_datasets_folder(path):
            try:
                from datasets import load_from_disk
            except ImportError:
                raise LaserError(
                    f"{path}: reading a datasets folder needs `datasets` (pip install 'laser-rl[data]')"
                ) from None
            try:
                dataset = load_from_disk(str(path))
            except Exception as e:  # datasets raises several unrelated types
                raise LaserError(f"{path}: cannot load the datasets folder ({e})") from None
            return path.name, [_dataset_table(_pick_split(dataset, split, str(path)), str(path))]
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DATA_FILE_SUFFIXES and p.is_file())
        if split is not None:
            files = [p for p in files if split in p.name]
        if not files:
            raise LaserError(f"{path}: no data files ({', '.join(DATA_FILE_SUFFIXES)}) and not a datasets folder")
        return path.name, [_file_table(f) for f in files]
    name = spec[3:] if spec.startswith("hf:") else spec
    name, _, hub_split = name.partition(":")
    if not spec.startswith("hf:") and is_local_path(name):
        raise LaserError(
            f"--data {spec}: not found (no such file or folder; not a benchmark name; a hub dataset is "
            "written owner/name or hf:owner/name)"
        )
    try:
        import datasets
    except ImportError:
        raise LaserError(f"--data {spec}: loading a hub dataset needs `datasets`") from None
    try:
        dataset = datasets.load_dataset(name, split=hub_split or split or "train")
    except Exception as e:  # offline, unknown name, ...
        raise LaserError(
            f"--data {spec}: not a local file/folder, and loading hub dataset {name!r} failed ({e})"
        ) from None
    return name.replace("/", "_"), [_dataset_table(dataset, f"hub dataset {name}")]


def _strip_instruction(text: str, instruction: str) -> str:
    for suffix in (instruction, instruction.strip()):
        if suffix and text.rstrip().endswith(suffix):
            return text.rstrip()[: -len(suffix)].rstrip()
    return text


def _user_content(messages: Any, where: str) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, (list, tuple)):
        raise LaserError(
            f"{where}: field 'prompt' must be a list of chat messages, got {type(messages).__name__}"
        )
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise LaserError(f"{where}: field 'prompt' has no user message")
    return users[-1]


def _answer_text(value: Any, where: str, field: str) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if value is None or isinstance(value, (dict, list, tuple)):
        raise LaserError(f"{where}: field {field!r} must be a string or number, got {value!r}")
    text = str(value).strip()
    if not text:
        raise LaserError(f"{where}: field {field!r} is empty")
    return text


def _problems_from_table(table: _Table, problem_key: str, answer_key: str, instruction: str) -> list[Problem]:
    """Check the columns, read only the ones needed, and turn every record into a :class:`Problem`."""
    columns = table.columns
    if not columns:
        raise LaserError(f"{table.where}: no records")
    # Recognised by its columns alone, whatever problem_key/answer_key say: the paper configs name
    # DeepMath's columns (question/final_answer) and must still read the reference parquet files.
    reference_layout = problem_key not in columns and "prompt" in columns and "reward_model" in columns
    extra: list[str] = []
    if reference_layout:
        wanted = ["prompt", "reward_model", *(c for c in _REFERENCE_META if c in columns)]
    else:
        for key in (problem_key, answer_key):
            if key not in columns:
                raise LaserError(
                    f"{table.where}: no {key!r} column; columns present: {', '.join(columns) or 'none'}"
                    " (set problem_key/answer_key to use other names)"
                )
        extra = [c for c in columns if c in table.numeric or c in _META_COLUMNS]
        wanted = list(dict.fromkeys([problem_key, answer_key, *extra]))

    problems = []
    for where, rec in table.read(wanted):
        if reference_layout:
            problem = _strip_instruction(_user_content(rec.get("prompt"), where), instruction)
            reward_model = rec.get("reward_model")
            if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
                raise LaserError(f"{where}: field 'reward_model.ground_truth' is missing")
            answer = _answer_text(reward_model["ground_truth"], where, "reward_model.ground_truth")
            meta = {k: rec[k] for k in _REFERENCE_META if rec.get(k) is not None}
        else:
            for key in (problem_key, answer_key):
                if key not in rec:
                    raise LaserError(f"{where}: missing field {key!r}")
            problem = rec[problem_key]
            if not isinstance(problem, str) or not problem.strip():
                raise LaserError(f"{where}: field {problem_key!r} must be a non-empty string")
            answer = _answer_text(rec[answer_key], where, answer_key)
            meta = {
                k: v
                for k, v in rec.items()
                if k in extra
                and k not in (problem_key, answer_key)
                and isinstance(v, (str, int, float, bool))
                and not (isinstance(v, str) and len(v) > 200)  # keep ids/levels, not solutions
            }
        meta["source"] = where
        problems.append(Problem(problem=problem, answer=answer, meta=meta))
    return problems


def load_file_data(
    spec: str, *, problem_key: str = "problem", answer_key: str = "answer", **options: Any
) -> TaskData:
    """Load math problems from a file, folder or hub dataset (module docstring) as a finite split.

    Options: ``split`` (datasets folder / hub split), ``limit`` (first N problems), ``instruction``
    (the suffix stripped from reference-layout prompts), ``verifier`` (default: the math verifier),
    ``name``. A missing column → ``LaserError`` naming the file and column and listing those present.
    """
    unknown = sorted(set(options) - set(_OPTIONS) - set(_IGNORED_OPTIONS))
    if unknown:
        raise LaserError(
            f"--data {spec}: unknown option(s) {', '.join(unknown)} (known: {', '.join(_OPTIONS)})"
        )
    instruction = options.get("instruction", _INSTRUCTION)
    limit = options.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LaserError(f"--data {spec}: limit must be a positive integer, got {limit!r}")

    name, tables = _open_tables(spec, options.get("split"))
    problems: list[Problem] = []
    for table in tables:
        if limit is not None and len(problems) >= limit:
            break
        problems += _problems_from_table(table, problem_key, answer_key, instruction)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise LaserError(f"--data {spec}: no records")

    verifier = options.get("verifier")
    if verifier is None:
        from laser_rl.rewards.math_verifier import MathVerifier

        verifier = MathVerifier()
    return TaskData(
        name=options.get("name") or name, verifier=verifier, prompt_style="chat", problems=problems
    )
