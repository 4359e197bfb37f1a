"""Hugging Face integration with the real Qwen2.5 tokenizer (built offline) and a tiny random Qwen2.

Covers: the tokenizer's ids and chat template, the shared prompt builder, stop ids, model/tokenizer
loading and its errors, and c_ref calibration (library and ``laser calibrate``).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from laser_rl.cli import main
from laser_rl.errors import LaserError
from laser_rl.integrations import hf
from laser_rl.integrations.hf import (
    SPEC_INSTRUCTION,
    build_prompt,
    build_prompts,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_stop_ids,
)
from laser_rl.integrations.qwen_tokenizer import (
    QWEN25_ADDED_TOKENS,
    build_qwen25_tokenizer,
    make_tiny_qwen2_folder,
    tiktoken_file,
    tiny_qwen2_model,
)

PROBLEMS = ["What is 2+2?", "Compute $3 \\times 7$.", "If $x^2 = 9$ and $x > 0$, find $x$.", "Simplify 10/4."]


@pytest.fixture(scope="module")
def qwen():
    return build_qwen25_tokenizer()


def eos_prone_model(tokenizer):
    """Tiny Qwen2 that samples EOS with probability ~0.2 per token, so some responses finish."""
    return tiny_qwen2_model(tokenizer, hidden=16, layers=1, eos_logit=10.5, seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_qwen2_folder(tmp_path_factory.mktemp("m") / "tiny-qwen2", eos_logit=10.5, seed=1)


def test_tiny_qwen2_eos_logit(qwen):
    prompts = torch.tensor(build_prompts(qwen, PROBLEMS[:1], "chat"))
    p_eos = {}
    for boost in (None, 10.5):
        model = tiny_qwen2_model(qwen, eos_logit=boost)
        assert model.config.vocab_size == len(qwen) and model.config.eos_token_id == 151643
        with torch.no_grad():
            p_eos[boost] = model(prompts).logits[0].softmax(-1)[:, qwen.eos_token_id]
    assert p_eos[None].max() < 1e-3  # random model: EOS is one token among 151k
    assert p_eos[10.5].min() > 0.05 and p_eos[10.5].max() < 0.6  # ~e^10.5 / (e^10.5 + 151k) everywhere


# ----------------------------------------------------------------------------------------------
# the tokenizer


def test_qwen25_token_ids(qwen):
    assert len(qwen) == 151643 + 22
    ids = {t: qwen.convert_tokens_to_ids(t) for t, _ in QWEN25_ADDED_TOKENS}
    assert list(ids.values()) == list(range(151643, 151665))
    assert (ids["<|endoftext|>"], ids["<|im_end|>"], ids["<|vision_start|>"]) == (151643, 151645, 151652)
    assert (qwen.eos_token_id, qwen.pad_token_id, qwen.bos_token_id) == (151643, 151643, None)
    assert build_qwen25_tokenizer(instruct=True).eos_token_id == 151645


def test_qwen25_encoding_matches_tiktoken_and_round_trips(qwen):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from laser_rl.integrations.qwen_tokenizer import QWEN25_PATTERN

    ranks = load_tiktoken_bpe(str(tiktoken_file()))
    oracle = tiktoken.Encoding("qwen", pat_str=QWEN25_PATTERN, mergeable_ranks=ranks, special_tokens={})
    texts = [
        "Let $f(x) = 3x^2 - 5x + 2$. Compute $f(12345)$ and put it in \\boxed{}.",
        "  Indentation\n\n\tand tabs, 'quotes' don't break; Ünïcödé 数学 🙂",
        "\\frac{\\sqrt{2}}{2} + \\int_0^1 x\\,dx = \\boxed{\\frac{1}{2}+\\frac{\\sqrt2}{2}}",
    ]
    for text in texts:
        ids = qwen.encode(text, add_special_tokens=False)
        assert ids == oracle.encode(text)
        assert qwen.decode(ids) == text
    # Digits are split one by one (Qwen2.5's pattern), and special tokens stay atomic inside text.
    assert len(qwen.encode("12345", add_special_tokens=False)) == 5
    assert qwen.encode("a<|im_end|>b", add_special_tokens=False)[1] == 151645


def test_qwen25_chat_template(qwen):
    messages = [{"role": "user", "content": "Hi"}]
    assert qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [
        {"role": "system", "content": "Be brief."},
        *messages,
        {"role": "assistant", "content": "4"},
    ]
    assert qwen.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )


def test_tokenizer_json_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LASER_CACHE_DIR", str(tmp_path / "cache"))
    build_qwen25_tokenizer()
    cached = list((tmp_path / "cache").glob("qwen2.5-tokenizer-*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    tok = build_qwen25_tokenizer(tmp_path / "out")
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert list((tmp_path / "cache").iterdir()) == cached  # no temp files left behind
    assert len(tok) == 151665 and (tmp_path / "out" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------------------------
# prompts and stop ids


def test_build_prompt_chat_and_raw(qwen):
    chat = build_prompt(qwen, "What is 2+2?", "chat")
    assert qwen.decode(chat) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
        + SPEC_INSTRUCTION
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        chat[0] == 151644 and chat.count(151645) == 2 and chat[-3:] == qwen.encode("<|im_start|>assistant\n")
    )
    raw = build_prompt(qwen, "What is 2+2?", "raw")
    assert raw == qwen.encode("What is 2+2?", add_special_tokens=False) and qwen.decode(raw) == "What is 2+2?"
    assert build_prompt(qwen, "Q", "chat", instruction="") == qwen.encode(
        qwen.apply_chat_template(
            [{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True
        )
    )
    system = qwen.decode(build_prompt(qwen, "Q", "chat", system="Be exact."))
    assert system.startswith("<|im_start|>system\nBe exact.<|im_end|>") and "helpful" not in system
    with pytest.raises(LaserError, match="prompt style"):
        build_prompt(qwen, "Q", "fancy")  # type: ignore[arg-type]


def test_build_prompts_batched_equals_single(qwen):
    for style in ("chat", "raw"):
        assert build_prompts(qwen, PROBLEMS, style) == [build_prompt(qwen, p, style) for p in PROBLEMS]
    assert build_prompts(qwen, [], "chat") == []


def test_build_prompt_without_chat_template_warns_once(monkeypatch):
    tok = build_qwen25_tokenizer()
    tok.chat_template = None
    tok.name_or_path = "no-template-test"
    monkeypatch.setattr(hf, "_warned", set())
    with pytest.warns(UserWarning, match="no chat template"):
        ids = build_prompt(tok, "What is 2+2?", "chat")
    assert tok.decode(ids) == "What is 2+2?" + SPEC_INSTRUCTION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_prompt(tok, "again", "chat")  # second call: no warning


def test_resolve_stop_ids(qwen, tmp_path):
    assert resolve_stop_ids(qwen) == [151643, 151645]  # EOS first, then the template's turn end
    instruct = build_qwen25_tokenizer(instruct=True)
    assert resolve_stop_ids(instruct) == [151645, 151643]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151664]}))
    assert resolve_stop_ids(qwen, model_path=tmp_path) == [151643, 151645, 151664]
    assert resolve_stop_ids(qwen, ["<|fim_pad|>", 151650]) == [151643, 151645, 151662, 151650]
    with pytest.raises(LaserError, match="not a single token"):
        resolve_stop_ids(qwen, ["two words"])


def test_resolve_stop_ids_without_template_is_just_eos(qwen):
    tok = build_qwen25_tokenizer()
    tok.chat_template = None
    assert resolve_stop_ids(tok) == [151643]  # <|endoftext|> is EOS; no template, no <|im_end|>


# ----------------------------------------------------------------------------------------------
# loading


def test_load_model_and_tokenizer_from_folder(qwen, model_dir):
    tok = load_tokenizer(model_dir)
    assert tok.eos_token_id == 151643 and tok.laser_pad_from_eos is False
    # From a model folder, transformers rebuilds the tokenizer as Qwen2Tokenizer: same ids, same prompts.
    assert build_prompts(tok, PROBLEMS, "chat") == build_prompts(qwen, PROBLEMS, "chat")
    assert tok.encode("x = 12345; y<|im_end|>\n数学") == qwen.encode("x = 12345; y<|im_end|>\n数学")
    assert resolve_stop_ids(tok) == [151643, 151645]  # generation_config's EOS adds nothing new
    model = load_model(model_dir, device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(LaserError, match="unknown dtype"):
        resolve_dtype("int3")


def test_load_model_reports_missing_files(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").unlink()
    (broken / "model.safetensors").unlink()
    with pytest.raises(LaserError, match=r"missing: config\.json, weights"):
        load_model(broken)
    with pytest.raises(LaserError, match="not found"):
        load_model(tmp_path / "nowhere")
    sharded = tmp_path / "sharded"
    shutil.copytree(model_dir, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LaserError, match="missing: weight shard model-00002-of-00002.safetensors"):
        load_model(sharded)


def test_load_tokenizer_errors_and_pad_fallback(qwen, tmp_path):
    with pytest.raises(LaserError, match="missing a tokenizer"):
        load_tokenizer(tmp_path)
    no_pad = tmp_path / "no_pad"
    qwen.save_pretrained(no_pad)
    config = json.loads((no_pad / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (no_pad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no pad token"):
        tok = load_tokenizer(no_pad)
    assert tok.pad_token_id == tok.eos_token_id == 151643 and tok.laser_pad_from_eos is True
    config.pop("eos_token", None)
    (no_pad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(LaserError, match="no EOS token"):
        load_tokenizer(no_pad)


# ----------------------------------------------------------------------------------------------
# calibration


def test_calibrate_c_ref_on_tiny_qwen2(qwen):
    from laser_rl.calibrate import calibrate_c_ref, measure_self_reward_logprobs
    from laser_rl.rollout import score_responses

    model = eos_prone_model(qwen)
    stops = resolve_stop_ids(qwen)
    kwargs = dict(z_id=151652, stop_ids=stops, pad_id=qwen.pad_token_id, max_new_tokens=8, batch_size=8)
    summary, values = measure_self_reward_logprobs(model, qwen, PROBLEMS, samples_per_problem=2, **kwargs)
    assert summary.total == 8 and summary.count == len(values) == summary.total - summary.truncated >= 2
    assert math.isclose(summary.mean, sum(values) / len(values), rel_tol=1e-6)
    assert all(v < -math.log(len(qwen)) + 1 for v in values)  # z is an improbable token here
    # Same seed → same numbers; the trainer's entry point (given the rollout's SamplingConfig, which
    # takes precedence over max_new_tokens) returns the same triple.
    from laser_rl.rollout import SamplingConfig

    config = SamplingConfig(max_new_tokens=8)
    same = calibrate_c_ref(
        model, qwen, PROBLEMS, samples_per_problem=2, **{**kwargs, "max_new_tokens": 1}, config=config
    )
    assert same == (summary.mean, summary.std, summary.count)
    # Each measured value is log pi(z | x, y, EOS) for the sampled response: check one row against the
    # teacher-forced scorer.
    prompts = build_prompts(qwen, PROBLEMS[:1], "chat")
    from laser_rl.rollout import sample

    rollout = sample(
        model,
        prompts * 3,
        pad_id=qwen.pad_token_id,
        stop_ids=stops,
        config=SamplingConfig(max_new_tokens=8),
        z_id=151652,
        generator=torch.Generator().manual_seed(0),
    )
    done = [i for i in range(3) if rollout.finished[i]]
    assert done
    forced = score_responses(
        model,
        prompts * len(done),
        [rollout.responses()[i] for i in done],
        z_id=151652,
        pad_id=qwen.pad_token_id,
        stop_ids=stops,
        eos_id=qwen.eos_token_id,
    )
    assert torch.allclose(forced, rollout.lp_z[done], atol=1e-4)


def test_calibrate_refuses_when_everything_is_truncated(qwen):
    from laser_rl.calibrate import calibrate_c_ref

    model = tiny_qwen2_model(qwen, hidden=16, layers=1)  # random: EOS has probability ~1/151k
    with pytest.raises(LaserError, match="raise --max-new-tokens"):
        calibrate_c_ref(
            model,
            qwen,
            PROBLEMS,
            z_id=151652,
            stop_ids=resolve_stop_ids(qwen),
            pad_id=qwen.pad_token_id,
            max_new_tokens=2,
        )


def test_calibrate_cli_saves_laser_json(model_dir, tmp_path, capsys):
    from laser_rl.score_params import ScoreParams

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    data = tmp_path / "problems.jsonl"  # DeepMath-103K's column names
    data.write_text("".join(json.dumps({"question": p, "final_answer": "1"}) + "\n" for p in PROBLEMS))
    report_path = tmp_path / "report.json"
    argv = [
        "calibrate",
        "--model",
        str(folder),
        "--data",
        str(data),
        "--n",
        "4",
        "--samples-per-problem",
        "2",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--save",
        "--json",
        str(report_path),
        "--quiet",
        "--problem-key",
        "question",
        "--answer-key",
        "final_answer",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "'<|vision_start|>' (id 151652)" in out and "suggested c_ref" in out
    report = json.loads(report_path.read_text())
    params = ScoreParams.load(folder)
    assert (params.token, params.token_id) == ("<|vision_start|>", 151652)
    assert params.c_ref == round(report["mean"], 2) and math.isclose(params.c_ref_std, report["std"])
    assert math.isclose(params.beta_v, 1.0 / (-4.0 - params.c_ref))  # derive_beta_v with the default target
    assert params.extra["calibration"]["count"] == report["count"] >= 2
    # A second run keeps the saved beta_v and token; an explicit bad token is a user error (exit 2).
    params.beta_v = 0.25
    params.save(folder)
    assert main([*argv, "--overwrite"]) == 0  # the report file exists now
    again = ScoreParams.load(folder)
    assert (again.beta_v, again.token_id, again.c_ref) == (
        0.25,
        151652,
        params.c_ref,
    )  # same seed, same c_ref


def test_calibrate_cli_bad_inputs(model_dir, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    assert main(["calibrate", "--model", str(tmp_path / "missing"), "--data", str(data), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # an argparse type, as in laser eval
        main(["calibrate", "--model", str(model_dir), "--data", str(data), "--n", "0"])
    assert exit_.value.code == 2 and "--n: must be >= 1, got 0" in capsys.readouterr().err
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_dir),
                "--data",
                str(data),
                "--token",
                "two words",
                "--max-new-tokens",
                "2",
                "--quiet",
            ]
        )
        == 2
    )
    assert "not a single token" in capsys.readouterr().err
    # A target log-prob below the measured c_ref: the measurement is reported, but nothing is saved.
    argv = [
        "calibrate",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--n",
        "1",
        "--samples-per-problem",
        "4",
    ]
    assert main([*argv, "--max-new-tokens", "8", "--target-logprob", "-50", "--save", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "no beta_v suggested" in captured.out and "pass --beta-v" in captured.err
    assert not (Path(model_dir) / "laser.json").exists()
