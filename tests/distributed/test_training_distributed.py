"""train_map on 2 gloo ranks equals one process; checkpoints; the CLI under a real torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ranks import run_ranks
from torch import nn
from torch.utils.data import TensorDataset

from tacitbayes import distributed as D
from tacitbayes.cli import main
from tacitbayes.io import write_json
from tacitbayes.training import TrainConfig, train_map

N_TRAIN = 101  # batches of 25: the last one has a single example, so rank 0's slice is empty


def _data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_TRAIN + 40, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _config(epochs: int, optimizer: str = "adam") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=25, optimizer=optimizer, lr=0.02, progress=False)


def _train(
    rank: int, world: int, epochs: int, optimizer: str, checkpoint: str | None, resume: bool
) -> dict:
    train, val = _data()
    model = _model()
    result = train_map(
        model,
        train,
        _config(epochs, optimizer),
        val_set=val,
        checkpoint=checkpoint,
        resume=resume,
    )
    return {"state": model.state_dict(), "history": result.history, "world": D.world_size()}


def _one_process(epochs: int, optimizer: str = "adam") -> dict:
    return _train(0, 1, epochs, optimizer, None, False)


def _close(a: dict, b: dict, tol: float) -> None:
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=0, atol=tol)
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert abs(ra[k] - rb[k]) <= 1e-9, (k, ra[k], rb[k])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_two_ranks_train_the_one_process_weights(tmp_path: Path, optimizer: str) -> None:
    r0, r1 = run_ranks(_train, tmp_path, args=(3, optimizer, None, False))
    assert r0["world"] == r1["world"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # the ranks agree bit for bit
    assert r0["history"] == r1["history"]
    _close(r0, _one_process(3, optimizer), 1e-10)


def test_checkpoint_written_once_and_resumed(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    checkpoint = str(folder / "map.pt")
    run_ranks(_train, tmp_path / "a", args=(2, "adam", checkpoint, False))
    assert sorted(p.name for p in folder.iterdir()) == ["map.pt"]  # rank 1 wrote nothing
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    r0, r1 = run_ranks(_train, tmp_path / "b", args=(4, "adam", checkpoint, True))
    assert r0["history"] == r1["history"] and len(r0["history"]) == 4
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 4
    single = str(tmp_path / "single.pt")  # the same two calls in one process
    _train(0, 1, 2, "adam", single, False)
    _close(r0, _train(0, 1, 4, "adam", single, True), 1e-10)


def _write(rank: int, world: int, folder: str) -> bool:
    write_json(Path(folder) / f"rank{rank}.json", {"rank": rank})
    return D.is_main()


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    assert run_ranks(_write, tmp_path, args=(str(tmp_path / "out"),)) == [True, False]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rank0.json"]


def _resume_missing(rank: int, world: int, folder: str) -> str:
    try:
        _train(rank, world, 2, "adam", str(Path(folder) / "none.pt"), True)
    except Exception as exc:  # every rank raises the same InputError: none waits forever
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_resume_without_checkpoint_fails_on_every_rank(tmp_path: Path) -> None:
    r0, r1 = run_ranks(_resume_missing, tmp_path, args=(str(tmp_path),))
    assert r0 == r1 and r0.startswith("InputError: cannot resume")


def test_python_m_tacitbayes_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tacitbayes", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "compare" in done.stdout


SMALL = [
    "compare",
    "--dataset",
    "digits",
    "--methods",
    "map",
    "--epochs",
    "2",
    "--n-train",
    "300",
    "--width",
    "32",
    "--lr",
    "0.01",
    "--n-samples",
    "4",
    "--threads",
    "1",
    "--no-progress",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_compare_under_torchrun_matches_one_process(tmp_path: Path, capsys) -> None:
    out = tmp_path / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "tacitbayes",
        *SMALL,
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".json")) == ["results.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
    distributed = json.loads((out / "results.json").read_text())

    single_out = tmp_path / "single"
    assert main([*SMALL, "--out", str(single_out)]) == 0
    capsys.readouterr()
    single = json.loads((single_out / "results.json").read_text())

    a, b = distributed["methods"]["map"], single["methods"]["map"]
    keys = [k for k, v in b.items() if isinstance(v, float) and not k.endswith("_seconds")]
    assert keys and "accuracy" in keys and "nll" in keys
    for k in keys:
        assert abs(a[k] - b[k]) <= 1e-4, (k, a[k], b[k])
    for ra, rb in zip(distributed["train_history"], single["train_history"], strict=True):
        for k in ra:
            assert abs(ra[k] - rb[k]) <= 1e-4, (k, ra[k], rb[k])
