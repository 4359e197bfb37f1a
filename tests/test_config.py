"""The ``laser train`` config: YAML + overrides, strict validation, shipped configs match the spec."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from laser_rl.commands.train import parse_train_argv
from laser_rl.errors import LaserError
from laser_rl.training.config import (
    DEFAULT_INSTRUCTION,
    TrainConfig,
    config_fields,
    config_from_dict,
    config_from_yaml,
    config_to_dict,
    config_to_yaml,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
# training configs; configs/demo/base*.yaml hold `laser base` settings (tests/test_demo.py)
CONFIGS = sorted(  # laser train configs; configs/accelerate/ holds accelerate launch configs
    p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("base") and p.parent.name != "accelerate"
)
PAPER = ROOT / "configs" / "paper"
DEMO = ROOT / "configs" / "demo"
REQUIRED = ["output_dir=runs/x", "model.path=some/model", "data.train=arith:train"]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _error(fn) -> str:
    with pytest.raises(LaserError) as info:
        fn()
    return str(info.value)


# ------------------------------------------------------------------------------- shipped configs


def test_all_expected_configs_exist() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    expected = {f"demo/{arm}-{setup}.yaml" for arm in ("laser", "grpo") for setup in ("pairsum-verify", "pairsum", "pairsum-nocheck", "arith", "clock")} | {
        f"paper/{m}-{v}.yaml" for m in ("qwen2.5-7b", "orz-7b", "octothinker-3b") for v in ("laser", "grpo")
    }
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_config_loads_and_round_trips(path: Path) -> None:
    cfg = load_config(path, [])
    assert path.read_text(encoding="utf-8").startswith("#"), (
        "every shipped config starts with a comment header"
    )
    for comments in (True, False):
        text = config_to_yaml(cfg, comments=comments, header=f"resolved from {path.name}")
        assert config_from_yaml(text, "dump") == cfg
        # plain PyYAML (YAML 1.1) reads the dump to the same values too
        assert yaml.safe_load(text) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    # the file sets every key explicitly except documented defaults: nothing in it is unknown or misspelt
    assert isinstance(cfg, TrainConfig)


# Spec §4 table: model -> (hub id, z, c_ref, reasoning warm-up, self-reward warm-up)
PAPER_SETUPS = {
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", "<|vision_start|>", -23.0, 200, 200),
    "orz-7b": ("Open-Reasoner-Zero/Open-Reasoner-Zero-7B", "<|vision_start|>", -23.0, 0, 200),
    "octothinker-3b": (
        "OctoThinker/OctoThinker-3B-Short-Base",
        "<|reserved_special_token_0|>",
        -25.0,
        200,
        200,
    ),
}


@pytest.mark.parametrize("variant", ["laser", "grpo"])
@pytest.mark.parametrize("model", sorted(PAPER_SETUPS))
def test_paper_config_values_equal_spec(model: str, variant: str) -> None:
    cfg = load_config(PAPER / f"{model}-{variant}.yaml", [])
    hub_id, token, c_ref, w_r, w_sr = PAPER_SETUPS[model]
    assert cfg.model.path == hub_id
    assert cfg.model.dtype == "bfloat16"
    assert cfg.output_dir == f"runs/paper/{model}-{variant}"
    # 2 epochs over DeepMath-103K (103,022 problems) at 128 prompts per step, last partial batch dropped
    assert cfg.train.steps == 2 * (103_022 // 128) == 1608
    assert cfg.data.prompts_per_step == 128 and cfg.rollout.n == 8
    assert cfg.data.max_prompt_length == 2048 and cfg.rollout.max_new_tokens == 8192
    assert cfg.data.prompt_style == "chat" and cfg.data.instruction == DEFAULT_INSTRUCTION
    assert cfg.data.instruction == " Please reason step by step, and put your final answer within \\boxed{}."
    assert (cfg.data.problem_key, cfg.data.answer_key) == ("question", "final_answer")
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.top_p == 1.0 and cfg.rollout.top_k == 0
    assert cfg.optim.lr == 1e-6 and cfg.optim.weight_decay == 0.01
    assert cfg.optim.lr_scheduler == "constant" and cfg.optim.warmup_steps == 0
    assert cfg.optim.max_grad_norm == 1.0
    assert cfg.loss.clip_low == 0.2 and cfg.loss.clip_high == 0.2
    assert cfg.loss.clip_ratio_c == 3.0  # verl's dual-clip default, active in the reference runs
    assert cfg.loss.aggregation == "token-mean" and cfg.loss.kl_coef == 0.0
    assert cfg.loss.ppo_epochs == 1 and cfg.loss.mini_batches == 1  # one optimiser step per batch
    la = cfg.laser
    assert la.enabled is (variant == "laser")
    assert la.token == token and la.c_ref == c_ref and la.reference == "constant"
    assert la.beta_v == 0.1 and la.alpha == 0.1 and la.tau == 0.1 and la.filter_threshold == 0.1
    assert la.class_balanced is True
    assert (la.reasoning_warmup_steps, la.self_reward_warmup_steps) == (w_r, w_sr)
    assert la.resolve_beta_v(c_ref) == 0.1


@pytest.mark.parametrize("model", sorted(PAPER_SETUPS))
def test_paper_grpo_differs_from_laser_only_in_enabled(model: str) -> None:
    a = _flat(config_to_dict(load_config(PAPER / f"{model}-laser.yaml", [])))
    b = _flat(config_to_dict(load_config(PAPER / f"{model}-grpo.yaml", [])))
    assert {k for k in a if a[k] != b[k]} == {"laser.enabled", "output_dir"}


def test_demo_configs() -> None:
    laser = load_config(DEMO / "laser-arith.yaml", [])
    grpo = load_config(DEMO / "grpo-arith.yaml", [])
    a, b = _flat(config_to_dict(laser)), _flat(config_to_dict(grpo))
    assert {k for k in a if a[k] != b[k]} == {"laser.enabled", "output_dir"}
    assert laser.laser.enabled and not grpo.laser.enabled
    assert laser.model.path == "runs/demo/base"
    assert (laser.data.train, laser.data.eval) == ("arith:train", "arith")
    assert laser.data.prompts_per_step == 16 and laser.rollout.n == 8 and laser.rollout.temperature == 1.0
    assert laser.optim.lr == 1e-4 and laser.loss.clip_low == laser.loss.clip_high == 0.2
    assert (
        laser.loss.aggregation == "token-mean" and laser.loss.mini_batches == 1 and laser.loss.ppo_epochs == 1
    )
    assert laser.rollout.max_new_tokens == 64 and 200 <= laser.train.steps <= 300
    assert laser.laser.beta_v == "auto" and laser.laser.c_ref == "auto"
    assert (laser.laser.alpha, laser.laser.tau, laser.laser.filter_threshold) == (0.1, 0.1, 0.1)
    # the default setup (pair sum): the same comparison (GRPO vs LaSeR differ only in laser.enabled), α ramped in
    full_laser, full_grpo = load_config(DEMO / "laser-pairsum.yaml", []), load_config(DEMO / "grpo-pairsum.yaml", [])
    a, b = _flat(config_to_dict(full_laser)), _flat(config_to_dict(full_grpo))
    assert {k for k in a if a[k] != b[k]} == {"laser.enabled", "output_dir"}
    assert full_laser.train.steps == 200 and full_laser.laser.alpha == 0.1 and full_laser.laser.alpha_warmup_steps == 50
    assert full_laser.laser.tau == 0.0  # advantage integration measured to cost accuracy (rounds 3 and 4)
    assert full_laser.loss.kl_coef == 0.1  # keeps the written check honest in both arms (round 5)
    assert (full_laser.data.train, full_laser.data.eval) == ("pairsum:train", "pairsum")  # issue 18's task
    # the default setup (issue 24, pairsum-verify): the same RL settings but 300 steps, the arms differing only in
    # laser.enabled again
    v_laser, v_grpo = load_config(DEMO / "laser-pairsum-verify.yaml", []), load_config(DEMO / "grpo-pairsum-verify.yaml", [])
    va, vb = _flat(config_to_dict(v_laser)), _flat(config_to_dict(v_grpo))
    assert {k for k in va if va[k] != vb[k]} == {"laser.enabled", "output_dir"}
    assert {k for k in va if va[k] != a[k]} == {"train.steps"} and v_laser.train.steps == 300
    # demo measurement: c_ref ≈ -12 on the tiny base; auto puts the correct target at -4 -> beta_v = 0.125
    assert laser.laser.resolve_beta_v(-12.0) == pytest.approx(0.125)
    # the demo overrides the placeholder model path
    assert load_config(DEMO / "laser-arith.yaml", ["model.path=/tmp/b"]).model.path == "/tmp/b"


# ----------------------------------------------------------------------------------- schema / dump


def test_every_field_has_help_and_dump_shows_it() -> None:
    fields = config_fields()
    assert len(fields) > 60
    for key, _type, _default, doc in fields:
        assert doc.strip(), key
    text = config_to_yaml(TrainConfig(), comments=True).splitlines()
    for key, _type, _default, doc in fields:
        leaf = key.rsplit(".", 1)[-1]
        depth = key.count(".")
        line = next(i for i, ln in enumerate(text) if ln.startswith("  " * depth + leaf + ":"))
        assert text[line - 1].strip() == f"# {doc}"


def test_print_config_dump_is_valid_yaml_for_resolved_overrides() -> None:
    cfg = load_config(
        DEMO / "laser-arith.yaml", ["rollout.stop_tokens=[';', '#', 'yes', '1e5']", "data.instruction=' x: y # z'"]
    )
    text = config_to_yaml(cfg, header="laser train --print-config")
    assert text.startswith("# laser train --print-config\n")
    assert yaml.safe_load(text)["rollout"]["stop_tokens"] == [";", "#", "yes", "1e5"]
    assert config_from_yaml(text) == cfg


@settings(max_examples=150, deadline=None)
@given(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
    st.lists(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8), max_size=3),
)
def test_any_string_round_trips(instruction: str, stops: list[str]) -> None:
    cfg = load_config(None, REQUIRED)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, instruction=instruction),
        rollout=dataclasses.replace(cfg.rollout, stop_tokens=stops),
    )
    assert config_from_yaml(config_to_yaml(cfg)) == cfg


def test_yaml_12_scalars() -> None:
    text = "\n".join(
        [
            "output_dir: yes",  # a string, not true
            "model: {path: 2024-01-01}",  # a string, not a date
            "data: {train: '1:30', eval: 1:30}",  # not sexagesimal 90
            "optim: {lr: 1e-6}",  # a float in YAML 1.2 (a string in 1.1)
            "train: {steps: 010}",  # ten, not octal eight
        ]
    )
    cfg = config_from_yaml(text)
    assert cfg.output_dir == "yes" and cfg.model.path == "2024-01-01"
    assert cfg.data.train == cfg.data.eval == "1:30"
    assert cfg.optim.lr == 1e-6 and cfg.train.steps == 10
    msg = _error(lambda: load_config(None, [*REQUIRED, "data.shuffle=yes"]))
    assert "data.shuffle: expected a boolean (true/false), got string 'yes'" in msg


def test_int_promotes_to_float_only() -> None:
    cfg = load_config(None, [*REQUIRED, "optim.lr=1", "laser.c_ref=-23", "laser.beta_v=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.laser.c_ref == -23.0 and isinstance(cfg.laser.c_ref, float)
    assert isinstance(cfg.laser.beta_v, float)


def test_helpers() -> None:
    cfg = load_config(None, REQUIRED)
    auto = load_config(None, [*REQUIRED, "laser.beta_v=auto", "laser.target_logprob=-3"]).laser
    assert auto.resolve_beta_v(-23.0) == pytest.approx(1 / 20)
    assert "target_logprob" in _error(lambda: auto.resolve_beta_v(-2.0))
    assert cfg.rollouts_per_step == cfg.data.prompts_per_step * cfg.rollout.n
    # rollout.batch_size 0: one training step's responses of one process, in training and evaluation alike
    assert cfg.generation_batch_size() == cfg.rollouts_per_step == 256
    assert cfg.generation_batch_size(world_size=4) == 8 * 8
    assert load_config(None, [*REQUIRED, "rollout.batch_size=48"]).generation_batch_size(4) == 48


# ----------------------------------------------------------------------------------------- overrides


def test_overrides_any_order_and_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output_dir: a\nmodel: {path: m}\ndata: {train: arith:train}\ntrain: {steps: 7}\n")
    tokens = [
        ["--config", str(cfg_file)],
        ["--resume"],
        ["--print-config"],
        ["train.steps=9"],
        ["laser.c_ref=auto"],
        ["rollout.stop_tokens=[a,b]"],
        ["logging.wandb_project=null"],
    ]
    seen = set()
    rng = random.Random(0)
    orders = [list(tokens), list(reversed(tokens))] + [rng.sample(tokens, len(tokens)) for _ in range(40)]
    assert len({tuple(map(tuple, o)) for o in orders}) > 30
    for perm in orders:
        argv = [t for group in perm for t in group]
        path, overrides, flags = parse_train_argv(argv)
        assert path == str(cfg_file) and flags == {"resume": True, "print_config": True}
        cfg = load_config(path, overrides)
        assert cfg.train.steps == 9 and cfg.laser.c_ref == "auto"
        assert cfg.rollout.stop_tokens == ["a", "b"] and cfg.logging.wandb_project is None
        seen.add(config_to_yaml(cfg))
    assert len(seen) == 1
    # the file value is used when not overridden; a later override of the same key wins
    assert load_config(cfg_file, []).train.steps == 7
    assert load_config(cfg_file, ["train.steps=3", "train.steps=4"]).train.steps == 4
    assert parse_train_argv(["--config=x.yaml"]) == ("x.yaml", [], {"resume": False, "print_config": False})
    assert parse_train_argv(["-c", "x.yaml", "--", "--odd=1"])[1] == ["--odd=1"]


def test_override_values_use_yaml_rules() -> None:
    cfg = load_config(
        None,
        [
            *REQUIRED,
            "laser.token=<|vision_start|>",
            "rollout.top_k=50",
            "data.eval=null",
            "data.instruction=",  # clears a string key
            "laser={alpha: 0.5, tau: 0.3}",  # a whole section, merged
            "data.problem_key=#q",  # would be a YAML comment: kept as text
        ],
    )
    assert cfg.laser.token == "<|vision_start|>" and cfg.rollout.top_k == 50 and cfg.data.eval is None
    assert cfg.data.instruction == "" and cfg.data.problem_key == "#q"
    assert (cfg.laser.alpha, cfg.laser.tau, cfg.laser.beta_v) == (0.5, 0.3, 0.1)
    assert load_config(None, [*REQUIRED, "laser.token=128002"]).laser.token == 128002


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--resum"], "unknown option '--resum' (did you mean --resume?)"),
        (["--bogus"], "unknown option '--bogus'"),
        (["config.yaml"], "unexpected argument 'config.yaml'"),
        (["--config"], "argument --config/-c: expected one argument"),
        (["--config="], "argument --config/-c: expected a config file path"),
        (["--config", "a.yaml", "--config", "b.yaml"], "given twice"),
        (["--resume=1"], "argument --resume: ignored explicit argument '1'"),
        (["--", "b"], "unexpected argument 'b'"),
        (["=3"], "unexpected argument '=3'"),
    ],
)
def test_parse_train_argv_errors(argv: list[str], fragment: str) -> None:
    assert fragment in _error(lambda: parse_train_argv(argv))


# ------------------------------------------------------------------------------------- bad input


def test_unknown_key_in_file_names_file_line_and_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "cfg.yaml"
    f.write_text("output_dir: x\nmodel:\n  path: m\ndata:\n  train: arith:train\nlaser:\n  beta: 0.1\n")
    assert _error(lambda: load_config(f, [])) == (
        f"{f}:7: unknown key 'laser.beta' (did you mean laser.beta_v?)"
    )
    f.write_text("outputdir: x\n")
    assert "cfg.yaml:1: unknown key 'outputdir' (did you mean output_dir?)" in _error(
        lambda: load_config(f, [])
    )


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("laser.beta=0.2", "unknown key 'laser.beta' (did you mean laser.beta_v?)"),
        ("rollout.lr=0.1", "unknown key 'rollout.lr' (did you mean optim.lr?)"),  # right leaf, wrong section
        ("steps=3", "unknown key 'steps' (did you mean train.steps?)"),
        ("laser.aplha=0.2", "(did you mean laser.alpha?)"),
        ("train.steps.x=3", "unknown key 'train.steps.x'"),
        ("laser={alpha: 0.5, tu: 0.3}", "unknown key 'laser.tu' (did you mean laser.tau?)"),
        ("train.steps", "expected key=value"),
        ("train.steps=[1", "invalid value"),
    ],
)
def test_bad_override_keys(override: str, fragment: str) -> None:
    msg = _error(lambda: load_config(None, [*REQUIRED, override]))
    assert msg.startswith(f"override '{override}'") and fragment in msg


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.steps=yes", "train.steps: expected an integer, got string 'yes'"),
        ("train.steps=true", "train.steps: expected an integer, got boolean true"),
        ("train.steps=3.5", "train.steps: expected an integer, got number 3.5"),
        ("optim.lr=abc", "optim.lr: expected a number, got string 'abc'"),
        ("optim.lr=true", "optim.lr: expected a number, got boolean true"),
        ("optim.lr=.nan", "must be finite"),
        ("model.path=5", "model.path: expected a string, got integer 5"),
        ("output_dir=[a]", "output_dir: expected a string, got a list"),
        ("laser.enabled=1", "laser.enabled: expected a boolean (true/false), got integer 1"),
        ("laser.token=true", "laser.token: expected an integer or a string, got boolean true"),
        (
            "laser.c_ref=aut",
            "laser.c_ref: expected a number or 'auto', got string 'aut' (did you mean 'auto'?)",
        ),
        ("loss.aggregation=token_mean", "(did you mean 'token-mean'?)"),
        ("laser.reference=modle", "expected one of 'constant', 'model', got string 'modle'"),
        ("rollout.stop_tokens=[a, 1]", "rollout.stop_tokens: expected a list of strings"),
        ("rollout.stop_tokens=a", "expected a list of strings, got string 'a'"),
        ("laser=3", "'laser' is a section: expected a mapping, got integer 3"),
        ("data.shuffle=", "data.shuffle: expected a boolean (true/false), got string ''"),
        ("data.instruction=Answer: 42", "expected a string, got a mapping (quote text containing"),
    ],
)
def test_type_errors(override: str, fragment: str) -> None:
    msg = _error(lambda: load_config(None, [*REQUIRED, override]))
    assert msg.startswith(f"override '{override}': ") and fragment in msg


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.steps=0", "train.steps must be ≥ 1, got 0"),
        ("rollout.n=0", "rollout.n must be ≥ 1"),
        ("rollout.temperature=-0.5", "rollout.temperature must be > 0 for training"),
        ("rollout.temperature=0", "rollout.temperature must be > 0 for training: the training forward divides"),
        ("rollout.top_p=0", "rollout.top_p must be in (0, 1]"),
        ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1]"),
        ("laser.tau=1.5", "laser.tau must lie in [0, 1]"),
        ("laser.beta_v=0", "laser.beta_v must be > 0 or auto"),
        ("laser.c_ref=3", "laser.c_ref must be < 0"),
        ("loss.clip_low=-0.1", "loss.clip_low must be in [0, 1)"),
        ("loss.clip_high=-1", "loss.clip_high must be ≥ 0"),
        ("loss.clip_ratio_c=1", "loss.clip_ratio_c must be > 1 or null"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1)"),
        ("loss.mini_batches=1000", "loss.mini_batches must be ≤ data.prompts_per_step × rollout.n = 256"),
        ("train.eval_every=5", "train.eval_every needs data.eval"),
        ("guard.collapse_ratio=2", "guard.collapse_ratio must be in [0, 1]"),
        ("output_dir=", "output_dir is required"),
        ("model.path=  ", "model.path is required"),
    ],
)
def test_semantic_errors(override: str, fragment: str) -> None:
    msg = _error(lambda: load_config(None, [*REQUIRED, override]))
    assert msg.startswith(f"override '{override}': ") and fragment in msg


def test_beta_v_c_ref_consistency() -> None:
    # c_ref + 1/beta_v must stay below 0: with c_ref -12, beta_v 0.05 would target log pi(z) = +8
    msg = _error(lambda: load_config(None, [*REQUIRED, "laser.c_ref=-12", "laser.beta_v=0.05"]))
    assert "laser.beta_v = 0.05 with laser.c_ref = -12.0" in msg and "beta_v > 0.08333" in msg
    msg = _error(lambda: load_config(None, [*REQUIRED, "laser.c_ref=-3", "laser.beta_v=auto"]))
    assert "laser.target_logprob must be > laser.c_ref" in msg
    assert load_config(None, [*REQUIRED, "laser.c_ref=-12", "laser.beta_v=0.125"]).laser.beta_v == 0.125


def test_missing_required_keys_without_file() -> None:
    assert _error(lambda: load_config(None, [])) == (
        "output_dir is required (the run folder, e.g. output_dir=runs/my-run)"
    )


def test_errors_in_file_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "cfg.yaml"
    base = "output_dir: x\nmodel:\n  path: m\ndata:\n  train: arith:train\n"
    f.write_text(base + "rollout:\n  n: 8\n  temperature: hot\n")
    assert (
        _error(lambda: load_config(f, []))
        == f"{f}:8: rollout.temperature: expected a number, got string 'hot'"
    )
    f.write_text(base + "laser:\n  tau: 2\n")
    assert _error(lambda: load_config(f, [])) == f"{f}:7: laser.tau must lie in [0, 1], got 2.0"
    # the override is blamed, not the file, when it set the bad value
    assert _error(lambda: load_config(f, ["laser.tau=3"])).startswith("override 'laser.tau=3': ")
    assert load_config(f, ["laser.tau=0.5"]).laser.tau == 0.5
    f.write_text(base + "train:\n  steps: 3\n  steps: 4\n")
    assert _error(lambda: load_config(f, [])) == f"{f}:8: duplicate key 'train.steps' (first set on line 7)"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("output_dir: x\nmodel:\n  path: m\n  dtype: [bfloat16\ndata:\n  train: a\n")
    msg = _error(lambda: load_config(f, []))
    assert msg.startswith(f"{f}:5:") and "invalid YAML" in msg
    f.write_text("output_dir: x\nmodel:\n\tpath: m\n")
    assert _error(lambda: load_config(f, [])).startswith(f"{f}:3:")
    f.write_text("- a\n- b\n")
    assert "must be a mapping" in _error(lambda: load_config(f, []))


def test_shipped_configs_load_by_name_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve inside the installed package
    by_name = load_config("paper/qwen2.5-7b-laser.yaml", [])
    assert by_name == load_config(PAPER / "qwen2.5-7b-laser.yaml", [])
    assert load_config("configs/demo/laser-pairsum.yaml", []).data.train == "pairsum:train"
    msg = _error(lambda: load_config("paper/nope.yaml", []))
    assert msg.startswith("paper/nope.yaml: config file not found (nor among the shipped configs:")
    assert "paper/orz-7b-grpo.yaml" in msg and "demo/laser-arith.yaml" in msg
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "qwen2.5-7b-laser.yaml").write_text("output_dir: mine\nmodel: {path: m}\ndata: {train: arith:train}\n")
    assert load_config("paper/qwen2.5-7b-laser.yaml", []).output_dir == "mine"  # a file that exists wins


def test_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    assert (
        _error(lambda: load_config(tmp_path / "nope.yaml", []))
        == f"{tmp_path / 'nope.yaml'}: config file not found"
    )
    assert "not a file" in _error(lambda: load_config(tmp_path, []))
    assert "must be a mapping" in _error(lambda: config_from_dict([1, 2]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ library-backed paths


def test_nullable_float_key() -> None:
    assert load_config(None, REQUIRED).loss.clip_ratio_c is None  # off unless set
    cfg = load_config(None, [*REQUIRED, "loss.clip_ratio_c=3"])
    assert cfg.loss.clip_ratio_c == 3.0 and isinstance(cfg.loss.clip_ratio_c, float)
    assert load_config(None, [*REQUIRED, "loss.clip_ratio_c=3", "loss.clip_ratio_c="]).loss.clip_ratio_c is None
    msg = _error(lambda: load_config(None, [*REQUIRED, "loss.clip_ratio_c=abc"]))
    assert msg == "override 'loss.clip_ratio_c=abc': loss.clip_ratio_c: expected a number or null, got string 'abc'"
    msg = _error(lambda: load_config(None, [*REQUIRED, "loss.clip_ratio_c=1"]))
    assert msg == "override 'loss.clip_ratio_c=1': loss.clip_ratio_c must be > 1 or null (off), got 1.0"
    assert config_from_yaml(config_to_yaml(cfg)) == cfg


def test_empty_section_and_unsupported_values(tmp_path: Path) -> None:
    f = tmp_path / "cfg.yaml"
    # a section whose keys are all commented out reads as null: it means the defaults
    f.write_text("output_dir: x\nmodel: {path: m}\ndata: {train: arith:train}\nlaser:\n  # alpha: 0.5\n")
    assert load_config(f, []).laser == TrainConfig().laser
    f.write_text("output_dir: !!binary aGk=\nmodel: {path: m}\ndata: {train: arith:train}\n")
    assert _error(lambda: load_config(f, [])).startswith(f"{f}: unsupported value b'hi'")
    f.write_text("output_dir: x\nmodel: {path: m}\ndata: {train: arith:train}\n1: 2\n")
    assert _error(lambda: load_config(f, [])) == f"{f}:4: unknown key '1'"
    msg = _error(lambda: config_from_dict({"train": {"steps": 3.0}}, source="ckpt/config.yaml"))
    assert msg == "ckpt/config.yaml: train.steps: expected an integer, got number 3.0"


def test_aggregations_have_one_owner() -> None:
    from typing import get_args, get_type_hints

    from laser_rl.core import AGGREGATIONS
    from laser_rl.core import laser as core_laser
    from laser_rl.training.config import LossConfig

    assert core_laser.AGGREGATIONS is AGGREGATIONS
    assert get_args(get_type_hints(LossConfig)["aggregation"]) == AGGREGATIONS
    assert "expected one of 'token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum'" in _error(
        lambda: load_config(None, [*REQUIRED, "loss.aggregation=mean"])
    )


def test_loading_a_config_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from laser_rl.training.config import load_config, config_to_yaml; "
        f"config_to_yaml(load_config({str(PAPER / 'orz-7b-laser.yaml')!r})); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # `laser train --print-config` stays fast


def test_cli_print_config_round_trips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from laser_rl.cli import main

    paper = str(PAPER / "qwen2.5-7b-laser.yaml")
    assert main(["train", "rollout.n=4", "--print-config", "--config", paper, "optim.lr=2e-6"]) == 0
    text = capsys.readouterr().out
    assert "# Peak learning rate of AdamW.\n  lr: 2.0e-06\n" in text  # help comments above their keys
    expected = load_config(paper, ["rollout.n=4", "optim.lr=2e-6"])
    assert config_from_yaml(text, "printed") == expected
    (tmp_path / "printed.yaml").write_text(text, encoding="utf-8")
    assert load_config(tmp_path / "printed.yaml") == expected
    assert main(["train", "--config", paper, "laser.betav=0.2", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == "laser train: error: override 'laser.betav=0.2': unknown key 'laser.betav' (did you mean laser.beta_v?)\n"


# ----------------------------------------------------------------------- issue 22: temperature, drop_last


def test_training_refuses_temperature_zero_with_one_line_naming_the_field_and_why() -> None:
    msg = _error(lambda: load_config(None, [*REQUIRED, "rollout.temperature=0"]))
    assert "\n" not in msg and msg.startswith("override 'rollout.temperature=0': rollout.temperature must be > 0")
    assert "divides the logits" in msg
    assert load_config(None, [*REQUIRED, "rollout.temperature=0.01"]).rollout.temperature == 0.01


def test_temperature_zero_in_a_file_names_its_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("output_dir: x\nmodel: {path: m}\ndata: {train: arith:train}\nrollout:\n  temperature: 0\n")
    assert _error(lambda: load_config(f, [])).startswith(f"{f}:5: rollout.temperature must be > 0 for training")


def test_drop_last_defaults_off_and_the_paper_configs_set_it() -> None:
    assert load_config(None, REQUIRED).data.drop_last is False
    assert load_config(None, [*REQUIRED, "data.drop_last=true"]).data.drop_last is True
    assert "verl" in dict((k, h) for k, _t, _d, h in config_fields())["data.drop_last"]
    for path in sorted(PAPER.glob("*.yaml")):
        assert "partial batch is dropped" in path.read_text() and load_config(path, []).data.drop_last is True
    for path in sorted(DEMO.glob("[!b]*.yaml")):  # the demo keeps today's behaviour
        assert load_config(path, []).data.drop_last is False
