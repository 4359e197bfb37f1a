"""Rebuild a shipped demo base model and compare it with the shipped one, byte for byte (issue 25).

    python scripts/check_shipped_base.py [--setup pairsum-verify] [--keep DIR]   # check (≈ 7 min on one core)
    python scripts/check_shipped_base.py --update                         # rebuild and ship the result

`laser demo` copies ``laser_rl/configs/demo/bases/SETUP`` instead of training the base model; that
folder must be exactly what ``laser base --config demo/base-SETUP.yaml --seed S --threads 1`` writes
(S and the settings are in its ``build.json``). This script runs that command in a fresh process
and compares every file. Exit status 0: identical; 1: something differs (each difference is named:
the file, the JSON keys, or the tensors and their largest absolute difference); 2: bad input.
Slow (a full SFT run), so it is a benchmark script, not a CI test. ``--update`` writes the rebuild
into the package (for when the setup's base config changes, or a new setup ships a base).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _json_diff(a: object, b: object, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(f"{where}{key}: only in the {'rebuild' if key in b else 'shipped file'}")
            else:
                out += _json_diff(a[key], b[key], f"{where}{key}.")
        return out
    return [] if a == b else [f"{where.rstrip('.')}: shipped {a!r}, rebuilt {b!r}"]


def _tensor_diff(shipped: Path, rebuilt: Path) -> list[str]:
    from safetensors.torch import load_file

    a, b = load_file(shipped), load_file(rebuilt)
    out = [f"tensor {k}: only in the {'rebuild' if k in b else 'shipped file'}" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype:
            out.append(f"tensor {k}: shipped {a[k].dtype}{tuple(a[k].shape)}, rebuilt {b[k].dtype}{tuple(b[k].shape)}")
        elif not a[k].equal(b[k]):
            out.append(f"tensor {k}: max |difference| {(a[k].double() - b[k].double()).abs().max().item():.3g}")
    return out or ["same tensors, different bytes (safetensors header or order)"]


def compare(shipped: Path, rebuilt: Path) -> list[str]:
    """What differs between two base folders (BUILD_FILE excepted); empty when byte-identical."""
    from laser_rl.demo import BUILD_FILE

    names = sorted(({p.name for p in shipped.iterdir()} | {p.name for p in rebuilt.iterdir()}) - {BUILD_FILE})
    out = []
    for name in names:
        a, b = shipped / name, rebuilt / name
        if not a.is_file() or not b.is_file():
            out.append(f"{name}: only in the {'rebuild' if b.is_file() else 'shipped folder'}")
        elif a.read_bytes() != b.read_bytes():
            if name.endswith(".json"):
                diffs = _json_diff(json.loads(a.read_text()), json.loads(b.read_text()))
                out += [f"{name}: {d}" for d in diffs] or [f"{name}: same content, different bytes"]
            elif name.endswith(".safetensors"):
                out += [f"{name}: {d}" for d in _tensor_diff(a, b)]
            else:
                out.append(f"{name}: different bytes")
    return out


def main(argv: list[str] | None = None) -> int:
    from laser_rl.demo import (
        BUILD_FILE,
        DEFAULT_SETUP,
        base_build_record,
        demo_config_path,
        load_base_settings,
        shipped_base_dir,
    )
    from laser_rl.errors import LaserError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", default=DEFAULT_SETUP, help=f"demo setup (default {DEFAULT_SETUP})")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the shipped build.json's, else 0)")
    parser.add_argument("--keep", metavar="DIR", help="build into DIR and keep it (default: a temporary folder)")
    parser.add_argument("--update", action="store_true", help="replace the shipped base with the rebuild")
    args = parser.parse_args(argv)
    try:
        settings = load_base_settings(demo_config_path("base", args.setup))
    except LaserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shipped = shipped_base_dir(args.setup)
    old = json.loads((shipped / BUILD_FILE).read_text()) if (shipped / BUILD_FILE).is_file() else {}
    seed = args.seed if args.seed is not None else old.get("seed", 0)
    record = base_build_record(args.setup, seed, settings)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="laser-base-check."))
    out = work / "base"
    cmd = [sys.executable, "-m", "laser_rl.cli", "base", "--config", record["config"], "--seed", str(seed),
           "--threads", "1", "--quiet", "--overwrite", "--out", str(out)]
    print("rebuilding: laser", " ".join(cmd[3:]), flush=True)
    try:
        subprocess.run(cmd, check=True)
        if args.update:
            if shipped.exists():
                shutil.rmtree(shipped)
            shutil.copytree(out, shipped)
            (shipped / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
            print(f"shipped the rebuild in {shipped}")
            return 0
        if not shipped.is_dir():
            print(f"no base ships for --setup {args.setup} ({shipped}); --update ships this rebuild")
            return 1
        diffs = compare(shipped, out)
        if old.get("settings") != record["settings"] or old.get("seed") != seed:
            diffs.append(f"{BUILD_FILE}: the shipped base was built from other settings than "
                         f"configs/demo/base-{args.setup}.yaml has now: {_json_diff(old, record)}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if diffs:
        print(f"the rebuild differs from the shipped base ({len(diffs)}):")
        for d in diffs:
            print(f"  {d}")
        return 1
    print(f"identical: the rebuild equals {shipped} byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
