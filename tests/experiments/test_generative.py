"""`tacitbayes generative`: a quick end-to-end run, its outputs, loading its checkpoint, bad input, the pieces."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tacitbayes import cli
from tacitbayes.errors import InputError
from tacitbayes.experiments.generative.evaluate import eval_subset, posterior_stats, spearman
from tacitbayes.experiments.generative.grids import grid_pixels
from tacitbayes.experiments.generative.run import (
    MEMORY_FRACTION,
    GenerativeSettings,
    default_memory_gb,
)
from tacitbayes.models import build_model
from tacitbayes.posteriors.generative import VAEDiagonalLaplace, VAEProjectedPosterior

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--quick", "--n-train", "200", "--epochs", "3", "--n-eval", "100", "--n-samples", "4"]
METHODS = ("elbo", "laplace_diag", "projected")
FINITE = ("reconstruction_error", "nll_bound", "ood_auroc", "spearman", "fit_seconds",
          "predict_seconds", "ood_reconstruction_error", "spearman_map_error")  # fmt: skip


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", raw[16:24])


def _fails_cleanly(argv: list[str], out: Path, match: str, capsys) -> None:
    code = cli.main(["generative", *TINY, "--no-progress", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not (out / "results.json").exists()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """The output folder of one tiny digits run (trained VAE, both posteriors, all outputs)."""
    out = tmp_path_factory.mktemp("generative") / "run"
    assert cli.main(["generative", *TINY, "--no-progress", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_results_report_and_grids(quick_run: Path, capsys) -> None:
    results = json.loads((quick_run / "results.json").read_text())
    assert results["dataset"] == "digits" and results["ood_dataset"] == "photo-patches"
    assert results["model"] == "vae_mlp" and results["predictive"] == "linearized"
    assert (results["n_train"], results["n_test"], results["n_ood"]) == (200, 100, 100)
    assert [h["epoch"] for h in results["train_history"]] == [1, 2, 3]
    assert tuple(results["methods"]) == METHODS
    for name, row in results["methods"].items():
        for key in FINITE:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key)
        assert 0 <= row["ood_auroc"] <= 1 and -1 <= row["spearman"] <= 1
        assert row["nll_bound"] == results["nll_bound"]  # the MAP VAE's, for every row
    for name in ("laplace_diag", "projected"):
        row = results["methods"][name]
        assert row["prior_precision"] > 0 and row["mean_pixel_std"] > 0
        assert row["n_params"] == results["n_params"]  # --params all
    assert results["methods"]["projected"]["solver_info"]["solver"] == "gram"
    report = (quick_run / "report.md").read_text()
    assert report.startswith("# tacitbayes generative: digits / vae_mlp")
    assert "## Verdicts" in report and "| projected |" in report and "predict like MAP" in report
    assert _png_size(quick_run / "reconstructions.png") == grid_pixels(4, 16)
    assert _png_size(quick_run / "generated.png") == grid_pixels(5, 8)
    assert sorted(p.name for p in quick_run.iterdir()) == [
        "generated.png",
        "reconstructions.png",
        "report.md",
        "results.json",
        "vae.pt",
    ]


def test_checkpoint_is_loaded_instead_of_training(quick_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "loaded"
    argv = ["generative", *TINY, "--no-progress", "--checkpoint", str(quick_run / "vae.pt")]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "projected" in printed and "OOD AUROC" in printed
    before = json.loads((quick_run / "results.json").read_text())
    after = json.loads((out / "results.json").read_text())
    assert after["train_history"] == [] and after["methods"]["elbo"]["fit_seconds"] is None
    assert after["nll_bound"] == pytest.approx(before["nll_bound"], rel=1e-6)
    assert not (out / "vae.pt").exists()


def test_wrong_checkpoints_fail_cleanly(tmp_path: Path, capsys) -> None:
    narrow = tmp_path / "narrow.pt"
    torch.save(build_model("vae_mlp", (1, 8, 8), 10, width=16).state_dict(), narrow)
    _fails_cleanly(["--checkpoint", str(narrow)], tmp_path / "a", "does not fit this model", capsys)
    classifier = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", (1, 8, 8), 10, width=8).state_dict(), classifier)
    _fails_cleanly(["--checkpoint", str(classifier)], tmp_path / "b", "does not fit", capsys)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "mlp"], "generative needs a VAE: --model vae_mlp or vae_conv, got 'mlp'"),
        (["--resume"], "cannot resume: checkpoint"),
        (["--resume", "--checkpoint", "x.pt"], "give one of them"),
        (["--model", "vae_conv", "--width", "8"], "give vae_conv --channels"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--params", "encoder"], "invalid choice"),
        (["--n-samples", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], match: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    _fails_cleanly(argv, out, match, capsys)
    assert not out.exists()  # refused before any work


def test_settings_defaults() -> None:
    s = GenerativeSettings().resolved()
    assert (s.epochs, s.n_eval, s.n_samples, s.width, s.channels) == (50, 2000, 16, 512, None)
    assert GenerativeSettings(dataset="fashion-mnist").resolved().epochs == 20
    quick = GenerativeSettings(model="vae_conv", quick=True, epochs=7).resolved()
    assert (quick.epochs, quick.n_train, quick.channels, quick.width) == (7, 300, 8, None)
    assert quick.model_options() == {"latent": 16, "channels": 8}
    with pytest.raises(InputError, match="needs a VAE"):
        GenerativeSettings(model="lenet").resolved()


def test_scores_are_the_posteriors_uncertainty_scores() -> None:
    torch.manual_seed(0)
    vae = build_model("vae_mlp", (1, 4, 4), 10, width=8, latent=2, mean=0.3, std=0.4).eval()
    x = (torch.rand(20, 1, 4, 4) - 0.3) / 0.4
    data = TensorDataset(x, torch.zeros(20, dtype=torch.long))
    for post in (VAEDiagonalLaplace(vae, seed=1), VAEProjectedPosterior(vae, "decoder", seed=1)):
        post.fit(data)
        for linearized in (True, False):
            stats = posterior_stats(post, x[:6], 5, linearized)
            expected = post.uncertainty_score(x[:6], 5, linearized)
            assert torch.allclose(stats["score"], expected, rtol=1e-5, atol=1e-7)
            mean, std = post.reconstruction_stats(x[:6], 5, linearized)
            error = (mean - vae.targets(x[:6])).square().flatten(1).sum(1)
            assert torch.allclose(stats["error"], error, rtol=1e-5, atol=1e-6)
            assert torch.allclose(stats["std"], std.flatten(1).mean(1), rtol=1e-5, atol=1e-7)


def test_eval_subset_and_spearman() -> None:
    x = torch.arange(50.0)
    a, b = eval_subset(x, 10, seed=3), eval_subset(x, 10, seed=3)
    assert torch.equal(a, b) and len(a) == 10 and bool((a.diff() > 0).all())
    assert eval_subset(x, 80, seed=3) is x
    assert spearman(x, x.square()) == pytest.approx(1.0)
    assert spearman(x, torch.ones(50)) is None and spearman(x[:1], x[:1]) is None


def test_the_default_kernel_budget_is_a_share_of_physical_memory() -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert default_memory_gb() == pytest.approx(MEMORY_FRACTION * total, abs=0.06)
    assert GenerativeSettings().resolved().memory_gb == default_memory_gb()
    assert GenerativeSettings(memory_gb=2.5).resolved().memory_gb == 2.5
