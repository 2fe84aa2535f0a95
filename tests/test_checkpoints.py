"""Checkpoints never run code, record a format version and the settings a resume must share."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from tacitbayes.checkpoints import FORMAT, VERSION, load_checkpoint
from tacitbayes.cli import main
from tacitbayes.data import load_dataset
from tacitbayes.errors import InputError
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map


class _WritesAFile:
    """A pickle payload: unpickling it calls exec, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _malicious(path: Path, marker: Path, zipped: bool) -> Path:
    """A checkpoint whose loading with weights_only=False would write ``marker``."""
    payload = {"model": _WritesAFile(marker), "epoch": 1}
    if zipped:
        torch.save(payload, path, pickle_protocol=2)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ood=False, n_train=200)


def _model(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (1, 8, 8), 10, width=width)


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "progress": False, **kw})


def _one_line_exit_2(argv: list[str], capsys, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize("zipped", [False, True])
def test_the_payload_is_real_and_loading_it_writes_nothing(tmp_path: Path, zipped: bool) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_WritesAFile(probe), protocol=2))  # the payload does run code
    assert probe.read_text() == "pwned"
    marker = tmp_path / "marker"
    path = _malicious(tmp_path / "evil.pt", marker, zipped)
    with pytest.raises(InputError, match="was refused: it holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [False, True])
def test_cli_refuses_a_malicious_checkpoint(tmp_path: Path, capsys, zipped: bool) -> None:
    marker = tmp_path / "marker"
    evil = _malicious(tmp_path / "evil.pt", marker, zipped)
    base = ["compare", "--methods", "map", "--n-train", "200", "--no-progress"]
    argv = [*base, "--checkpoint", str(evil), "--out", str(tmp_path / "a")]
    _one_line_exit_2(argv, capsys, "was refused")
    out = tmp_path / "b"
    out.mkdir()
    _malicious(out / "map.pt", marker, zipped)
    _one_line_exit_2([*base, "--resume", "--out", str(out)], capsys, "was refused")
    assert not marker.exists()
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"hello, this is text\n", "is not a PyTorch checkpoint"),
        (b"", "is not a PyTorch checkpoint"),
        (b"PK\x03\x04 not really a zip", "is not a PyTorch checkpoint"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_line(
    tmp_path: Path, capsys, content: bytes, match: str
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    out = tmp_path / "out"
    argv = ["compare", "--methods", "map", "--no-progress", "--checkpoint", str(bad)]
    _one_line_exit_2([*argv, "--out", str(out)], capsys, match)
    assert not out.exists()


def test_training_checkpoint_holds_plain_values_a_version_and_settings(
    digits, tmp_path: Path
) -> None:
    ckpt = tmp_path / "map.pt"
    train_map(_model(), digits.train, _config(), checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)  # no allow-list needed
    assert state["format"] == FORMAT and state["version"] == VERSION and state["epoch"] == 2
    assert state["settings"] == {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 128,
        "loss": "cross_entropy",
        "schedule": "cosine",
        "seed": 0,
    }
    assert state["shapes"] == {k: list(v.shape) for k, v in _model().state_dict().items()}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"lr": 0.01}, "lr was 0.001 there but is 0.01 now"),
        ({"batch_size": 64}, "batch_size was 128 there but is 64 now"),
        ({"seed": 3}, "seed was 0 there but is 3 now"),
        ({"optimizer": "sgd"}, "optimizer was 'adam' there but is 'sgd' now"),
        ({"weight_decay": 0.0}, "weight_decay was"),
    ],
)
def test_resume_with_other_settings_names_the_setting(
    digits, tmp_path: Path, change: dict, match: str
) -> None:
    ckpt = tmp_path / "map.pt"
    train_map(_model(), digits.train, _config(), checkpoint=ckpt)
    with pytest.raises(InputError, match=match):
        train_map(_model(), digits.train, _config(epochs=3, **change), checkpoint=ckpt, resume=True)


def test_resume_checks_shapes_and_version_but_allows_more_epochs(digits, tmp_path: Path) -> None:
    ckpt = tmp_path / "map.pt"
    train_map(_model(), digits.train, _config(), checkpoint=ckpt)
    with pytest.raises(InputError, match=r"has shape \[16, 64\] there but \[32, 64\] here"):
        train_map(_model(width=32), digits.train, _config(epochs=3), checkpoint=ckpt, resume=True)
    result = train_map(_model(), digits.train, _config(epochs=3), checkpoint=ckpt, resume=True)
    assert result.resumed_from == 2 and result.epochs_run == 1
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "version": VERSION + 1}, ckpt)
    with pytest.raises(InputError, match=f"checkpoint format version {VERSION + 1}"):
        train_map(_model(), digits.train, _config(epochs=4), checkpoint=ckpt, resume=True)
    torch.save({"model": state["model"], "optimizer": state["optimizer"], "epoch": 3}, ckpt)
    with pytest.raises(InputError, match="not a tacitbayes training checkpoint"):
        train_map(_model(), digits.train, _config(epochs=4), checkpoint=ckpt, resume=True)


def test_compare_checkpoint_of_another_width_is_one_line(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "w16.pt"
    torch.save(_model(width=16).state_dict(), ckpt)
    argv = ["compare", "--methods", "map", "--width", "32", "--no-progress"]
    argv += ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    _one_line_exit_2(argv, capsys, "does not fit this model")
