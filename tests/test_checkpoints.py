"""Checkpoints never run code, record a format version and the settings a resume must share."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from malicious import WritesAFile, malicious_checkpoint
from tacitbayes.checkpoints import FORMAT, VERSION, EpochCheckpoints, load_checkpoint
from tacitbayes.cli import main
from tacitbayes.data import load_dataset
from tacitbayes.errors import InputError
from tacitbayes.experiments.compare.method_ivon import IvonSettings, train_ivon
from tacitbayes.experiments.compare.registry import FitContext
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map
from tacitbayes.variational import IBVIConfig, VariationalModel, train_ibvi


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
    pickle.loads(pickle.dumps(WritesAFile(probe), protocol=2))  # the payload does run code
    assert probe.read_text() == "pwned"
    marker = tmp_path / "marker"
    path = malicious_checkpoint(tmp_path / "evil.pt", marker, zipped)
    with pytest.raises(InputError, match="was refused: it holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [False, True])
def test_cli_refuses_a_malicious_checkpoint(tmp_path: Path, capsys, zipped: bool) -> None:
    marker = tmp_path / "marker"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker, zipped)
    base = ["compare", "--methods", "map", "--n-train", "200", "--no-progress"]
    argv = [*base, "--checkpoint", str(evil), "--out", str(tmp_path / "a")]
    _one_line_exit_2(argv, capsys, "was refused")
    out = tmp_path / "b"
    out.mkdir()
    malicious_checkpoint(out / "map.pt", marker, zipped)
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


class _Crash(Exception):
    """Stands for a kill right after a checkpoint was written."""


def _crash_after(monkeypatch, epoch: int) -> None:
    """Make EpochCheckpoints.save raise once it has written the state after ``epoch``."""
    save = EpochCheckpoints.save

    def save_then_crash(self, model, optimizer, done, history):
        save(self, model, optimizer, done, history)
        if done == epoch:
            raise _Crash

    monkeypatch.setattr(EpochCheckpoints, "save", save_then_crash)


def _vnet() -> VariationalModel:
    return VariationalModel(_model(), init=True, layers=["5"], rank=4)


def test_ibvi_resumed_after_a_crash_ends_with_the_uninterrupted_weights(
    digits, tmp_path: Path, monkeypatch
) -> None:
    config = IBVIConfig(epochs=4, optimizer="adam", lr=1e-3, progress=False)
    reference = _vnet()
    full = train_ibvi(reference, digits.train, config, checkpoint=tmp_path / "full.pt")
    _crash_after(monkeypatch, 2)
    with pytest.raises(_Crash):
        train_ibvi(_vnet(), digits.train, config, checkpoint=tmp_path / "ibvi.pt")
    monkeypatch.undo()
    resumed = _vnet()
    result = train_ibvi(resumed, digits.train, config, checkpoint=tmp_path / "ibvi.pt", resume=True)
    assert result.resumed_from == 2 and result.history == full.history
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert a == b if name.endswith("_extra_state") else torch.equal(a, b), name
    with pytest.raises(InputError, match="lr was 0.001 there but is 0.01 now"):
        train_ibvi(
            _vnet(),
            digits.train,
            dataclasses.replace(config, lr=0.01),
            checkpoint=tmp_path / "ibvi.pt",
            resume=True,
        )
    with pytest.raises(InputError, match="holds a 'tacitbayes-ibvi-training' checkpoint"):
        train_map(_model(), digits.train, _config(), checkpoint=tmp_path / "ibvi.pt", resume=True)


def test_ivon_resumed_after_a_crash_ends_with_the_uninterrupted_weights_and_noise(
    digits, tmp_path: Path, monkeypatch
) -> None:
    bundle = load_dataset("digits", ood=False, n_train=200)
    ctx = FitContext(
        model=_model(),
        data=bundle,
        train_config=_config(epochs=4),
        model_name="mlp",
        model_options={"width": 16},
        progress=False,
    )
    model, opt, info = train_ivon(ctx, checkpoint=tmp_path / "full.pt")
    _crash_after(monkeypatch, 3)
    with pytest.raises(_Crash):
        train_ivon(ctx, checkpoint=tmp_path / "ivon.pt")
    monkeypatch.undo()
    resumed, resumed_opt, resumed_info = train_ivon(
        ctx, checkpoint=tmp_path / "ivon.pt", resume=True
    )
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.generator.get_state(), resumed_opt.generator.get_state())
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        for key, value in opt.state[p].items():
            other = resumed_opt.state[q][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    assert resumed_info["train_loss"] == info["train_loss"]
    with pytest.raises(InputError, match="hess_init was 1.0 there but is 0.5 now"):
        train_ivon(ctx, IvonSettings(hess_init=0.5), checkpoint=tmp_path / "ivon.pt", resume=True)
