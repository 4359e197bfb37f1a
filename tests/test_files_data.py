"""Training/evaluation data from files: JSONL, parquet, the reference (verl) layout, datasets folders."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laser_rl.errors import LaserError
from laser_rl.rewards.math_verifier import MathVerifier
from laser_rl.tasks.files import load_file_data
from laser_rl.tasks.registry import load_task_data

INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."
ROWS = [
    {"problem": "What is $1+1$?", "answer": "2", "level": 1},
    {"problem": "Compute $\\frac{6}{4}$.", "answer": "\\frac{3}{2}", "level": 2},
    {"problem": "How many primes are below 10?", "answer": 4, "level": 1},  # a number, not a string
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_problems_answers_and_verifier(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{**r, "solution": "1+1=2"} for r in ROWS])
    data = load_task_data(str(path))  # through the --data registry
    assert data.name == "train.jsonl" and data.prompt_style == "chat" and data.stream is None
    assert [(p.problem, p.answer) for p in data.problems] == [
        ("What is $1+1$?", "2"),
        ("Compute $\\frac{6}{4}$.", "\\frac{3}{2}"),
        ("How many primes are below 10?", "4"),
    ]
    assert data.problems[1].meta == {"level": 2, "source": f"{path}:2"}
    assert isinstance(data.verifier, MathVerifier)
    assert data.verifier.reward("so the answer is \\boxed{1.5}", data.problems[1].answer) == 1.0
    assert data.verifier.reward("so the answer is \\boxed{5}", data.problems[2].answer) == 0.0
    assert len(load_file_data(str(path), limit=2).problems) == 2


def test_custom_column_names_and_parquet(tmp_path):
    # DeepMath-103K's own columns are `question` and `final_answer`.
    rows = [
        {
            "question": r["problem"],
            "final_answer": str(r["answer"]),
            "difficulty": 5.0,
            "r1_solution_1": "short",
        }
        for r in ROWS
    ]
    path = tmp_path / "deepmath.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_file_data(str(path), problem_key="question", answer_key="final_answer")
    assert [p.answer for p in data.problems] == ["2", "\\frac{3}{2}", "4"]
    assert data.problems[0].problem == "What is $1+1$?"
    assert (
        "r1_solution_1" not in data.problems[0].meta
    )  # string columns other than ids/levels are not even read
    assert data.problems[0].meta["difficulty"] == 5.0
    assert data.problems[2].meta["source"] == f"{path}: row 2"


def test_reference_pipeline_parquet_layout(tmp_path):
    rows = [
        {
            "data_source": "deepmath",
            "prompt": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": r["problem"] + INSTRUCTION},
            ],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(r["answer"])},
            "extra_info": {"index": i},
        }
        for i, r in enumerate(ROWS)
    ]
    rows[2]["prompt"] = [{"role": "user", "content": ROWS[2]["problem"]}]  # no suffix: kept as is
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_task_data(str(path))
    assert [p.problem for p in data.problems] == [r["problem"] for r in ROWS]  # instruction stripped
    assert [p.answer for p in data.problems] == ["2", "\\frac{3}{2}", "4"]
    assert data.problems[0].meta["data_source"] == "deepmath"
    assert data.problems[0].meta["extra_info"] == {"index": 0}


def test_reference_layout_is_recognised_under_the_paper_column_names(tmp_path):
    # the paper configs say problem_key: question, answer_key: final_answer (DeepMath's columns)
    rows = [
        {"prompt": [{"role": "user", "content": r["problem"] + INSTRUCTION}],
         "reward_model": {"style": "rule", "ground_truth": str(r["answer"])}}
        for r in ROWS
    ]
    path = tmp_path / "ref.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_task_data(str(path), problem_key="question", answer_key="final_answer")
    assert [(p.problem, p.answer) for p in data.problems] == [(r["problem"], str(r["answer"])) for r in ROWS]


def test_datasets_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    single = tmp_path / "single"
    Dataset.from_list([{**r, "answer": str(r["answer"])} for r in ROWS]).save_to_disk(str(single))
    problems = load_task_data(str(single)).problems
    assert [p.answer for p in problems] == ["2", "\\frac{3}{2}", "4"]
    assert [p.meta["level"] for p in problems] == [1, 2, 1]

    splits = tmp_path / "splits"
    rows = [{"problem": r["problem"], "answer": str(r["answer"])} for r in ROWS]
    DatasetDict({"train": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[2:])}).save_to_disk(
        str(splits)
    )
    assert len(load_task_data(str(splits)).problems) == 2  # default split: train
    assert [p.answer for p in load_task_data(f"{splits}:test").problems] == ["4"]
    assert [p.answer for p in load_file_data(str(splits), split="test").problems] == ["4"]
    with pytest.raises(LaserError, match="split 'dev' not found; splits present: train, test"):
        load_task_data(f"{splits}:dev")


def test_folder_of_jsonl_files(tmp_path):
    write_jsonl(tmp_path / "part-0.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "part-1.jsonl", ROWS[2:])
    assert [p.answer for p in load_task_data(str(tmp_path)).problems] == ["2", "\\frac{3}{2}", "4"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"problem": "x", "answer": \n', encoding="utf-8")
    with pytest.raises(LaserError, match=r"bad\.jsonl:3: malformed JSON"):
        load_task_data(str(path))


def test_malformed_jsonl_line_reports_the_exact_column(tmp_path):
    # a record cut off at the end of its line used to be reported at "column 1" (the line break)
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"problem": "x", "answer": "1"\n', encoding="utf-8")
    with pytest.raises(LaserError) as err:
        load_task_data(str(path))
    assert str(err.value) == f"{path}:2: malformed JSON (Expecting ',' delimiter at column 31 (end of line))"
    # an error inside the line keeps its place
    path.write_text('{"problem": "x" "answer": "1"}\r\n', encoding="utf-8")
    with pytest.raises(LaserError, match=r"cut\.jsonl:1: malformed JSON \(Expecting ',' delimiter at column 17\)$"):
        load_task_data(str(path))


def test_missing_answer_column_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "noanswer.jsonl", [{"problem": "1+1?", "solution": "2"}])
    with pytest.raises(
        LaserError, match=r"noanswer\.jsonl: no 'answer' column; columns present: problem, solution"
    ):
        load_task_data(str(path))
    parquet = tmp_path / "noanswer.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "1+1?", "final_answer": "2"}]), parquet)
    with pytest.raises(
        LaserError, match=r"noanswer\.parquet: no 'problem' column; columns present: question"
    ):
        load_file_data(str(parquet))
    with pytest.raises(LaserError, match="no 'gold' column"):
        load_file_data(str(parquet), problem_key="question", answer_key="gold")


def test_bad_records_and_specs(tmp_path):
    path = write_jsonl(tmp_path / "gaps.jsonl", [ROWS[0], {"problem": "x"}])
    with pytest.raises(LaserError, match=r"gaps\.jsonl:2: missing field 'answer'"):
        load_task_data(str(path))
    path = write_jsonl(tmp_path / "empty_answer.jsonl", [{"problem": "x", "answer": " "}])
    with pytest.raises(LaserError, match=r"empty_answer\.jsonl:1: field 'answer' is empty"):
        load_task_data(str(path))
    path = write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(LaserError, match="unknown option"):
        load_file_data(str(path), shuffle=True)
    assert (
        len(load_file_data(str(path), task_file="task.json").problems) == 3
    )  # embedded-task option: ignored
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LaserError, match=r"empty\.jsonl: no records"):
        load_task_data(str(tmp_path / "empty.jsonl"))
    with pytest.raises(LaserError, match="no such file or folder"):
        load_task_data(str(tmp_path / "missing" / "train.jsonl"))
    (tmp_path / "data.csv").write_text("problem,answer\n1+1,2\n")
    with pytest.raises(LaserError, match="unsupported data file type '.csv'"):
        load_task_data(str(tmp_path / "data.csv"))
    reference = tmp_path / "ref.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "q"}], "reward_model": {"x": 1}}]),
        reference,
    )
    with pytest.raises(
        LaserError, match=r"ref\.parquet: row 0: field 'reward_model.ground_truth' is missing"
    ):
        load_task_data(str(reference))
