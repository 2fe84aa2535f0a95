"""A run killed with SIGKILL during a training, then resumed, ends exactly as an uninterrupted run.

``compare --methods map,ibvi,ivon`` runs in a subprocess; it is killed at a random
moment after the checkpoint of one of its trainings (MAP, then the IBVI and IVON fits;
each writes one per epoch) first appears, then rerun with ``--resume``. The final
checkpoints (weights, optimizer state with IVON's noise generator, history) and the
metrics in results.json must equal those of an uninterrupted run bit for bit (same
thread count), every checkpoint must load at every kill point (never torn), and no
temporary file may be left in ``--out``. ``TACITBAYES_KILL_POINTS`` sets how many kill
points are tried (default 3: one in each training, in turn).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tacitbayes.io import PROBE_PREFIX, TMP_SUFFIX

COMMAND = [
    sys.executable, "-m", "tacitbayes", "compare", "--dataset", "digits",
    "--methods", "map,ibvi,ivon", "--n-train", "300", "--epochs", "6", "--width", "32",
    "--no-progress", "--threads", "1",
]  # fmt: skip
TRAININGS = ("map", "ibvi", "ivon")  # each writes OUT/<name>.pt after every epoch
KILL_POINTS = int(os.environ.get("TACITBAYES_KILL_POINTS", "3"))
TIMEOUT = 300


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


def _kill_during(training: str, out: Path, delay: float) -> int:
    """Start a run, SIGKILL it ``delay`` s after OUT/<training>.pt appears; that file's epoch then."""
    proc = _start(out)
    deadline = time.monotonic() + TIMEOUT
    while not (out / f"{training}.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"no {training} checkpoint appeared"
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert not (out / "results.json").exists(), "the run ended before it was killed"
    for name in TRAININGS:  # every checkpoint there loads: never torn
        if (out / f"{name}.pt").exists():
            torch.load(out / f"{name}.pt", weights_only=True)
    return int(torch.load(out / f"{training}.pt", weights_only=True)["epoch"])


def _metrics(out: Path) -> dict[str, Any]:
    """results.json without timings and without the settings that name the run."""
    results = json.loads((out / "results.json").read_text())
    methods = {
        name: {k: v for k, v in row.items() if "seconds" not in k and "ratio" not in k}
        for name, row in results["methods"].items()
    }
    return {"methods": methods, "train_history": results["train_history"]}


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert sa["epoch"] == sb["epoch"] and sa["history"] == sb["history"]
    assert sa["model"].keys() == sb["model"].keys()
    assert _tensors(sa["model"]) == _tensors(sb["model"])
    assert _tensors(sa["optimizer"]) == _tensors(sb["optimizer"])


def _tensors(obj: Any) -> Any:
    """``obj`` with every tensor replaced by its values as a list (for exact comparison)."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tensors(v) for v in obj]
    return obj


def _leftovers(out: Path) -> list[str]:
    return [
        p.name
        for p in out.iterdir()
        if p.name.endswith(TMP_SUFFIX) or p.name.startswith(PROBE_PREFIX)
    ]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    reference = _start(tmp_path / "reference")  # runs beside the first killed run
    killed_at = []
    for point in range(KILL_POINTS):
        out = tmp_path / f"killed-{point}"
        training = TRAININGS[point % len(TRAININGS)]
        killed_at.append((training, _kill_during(training, out, rng.uniform(0.0, 0.05))))
        proc = _start(out, "--resume")
        if point == 0:
            _finish(reference)
        _finish(proc)
        why = f"seed {seed}, killed in {training} training after epoch {killed_at[-1][1]}"
        for name in TRAININGS:
            _assert_same_checkpoint(tmp_path / "reference" / f"{name}.pt", out / f"{name}.pt")
        assert _metrics(out) == _metrics(tmp_path / "reference"), why
        assert _leftovers(out) == [], why
    assert all(1 <= epoch <= 6 for _, epoch in killed_at), killed_at
