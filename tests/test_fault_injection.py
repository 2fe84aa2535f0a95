"""A run killed with SIGKILL during training, then resumed, ends exactly as an uninterrupted run.

``compare`` runs in a subprocess; it is killed at a random moment after its checkpoint
first appears (training writes one per epoch), then rerun with ``--resume``. The final
map.pt (weights, optimizer state, history) and the metrics in results.json must equal
those of an uninterrupted run bit for bit (same thread count), the checkpoint must load
at every kill point (never torn), and no temporary file may be left in ``--out``.
``TACITBAYES_KILL_POINTS`` sets how many kill points are tried (default 1).
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
    sys.executable, "-m", "tacitbayes", "compare", "--dataset", "digits", "--methods", "map",
    "--n-train", "300", "--epochs", "6", "--width", "32", "--no-progress", "--threads", "1",
]  # fmt: skip
KILL_POINTS = int(os.environ.get("TACITBAYES_KILL_POINTS", "1"))
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


def _kill_during_training(out: Path, delay: float) -> int:
    """Start a run, SIGKILL it ``delay`` s after map.pt appears; the checkpoint's epoch then."""
    proc = _start(out)
    deadline = time.monotonic() + TIMEOUT
    while not (out / "map.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    return int(torch.load(out / "map.pt", weights_only=True)["epoch"])  # loads: never torn


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
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for index, state in sa["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["optimizer"]["state"][index][k]), (index, k)


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
        killed_at.append(_kill_during_training(out, rng.uniform(0.0, 0.05)))
        proc = _start(out, "--resume")
        if point == 0:
            _finish(reference)
        _finish(proc)
        why = f"seed {seed}, killed after epoch {killed_at[-1]}"
        _assert_same_checkpoint(tmp_path / "reference" / "map.pt", out / "map.pt")
        assert _metrics(out) == _metrics(tmp_path / "reference"), why
        assert _leftovers(out) == [], why
    assert all(1 <= epoch <= 6 for epoch in killed_at)
