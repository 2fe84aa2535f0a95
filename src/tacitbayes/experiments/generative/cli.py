"""Command-line wiring of `tacitbayes generative` (torch is imported by the run only)."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_run_options,
    positive_float,
    positive_int,
    report_run,
    settings_from_args,
)


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the `generative` command to the sub-command parsers."""
    p = sub.add_parser(
        "generative",
        help="uncertainty of a VAE: the loss-projected posterior vs diagonal Laplace and the ELBO",
        description="Train a VAE (or load --checkpoint), fit the loss-projected posterior and a "
        "diagonal Laplace posterior on every training image, and score test and OOD images by "
        "the variance of their reconstructions (and by the MAP's negative ELBO): OOD AUROC, "
        "Spearman correlation with the reconstruction error, image grids.",
    )
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist or mnist")
    p.add_argument("--model", default="vae_mlp", help="vae_mlp or vae_conv")
    p.add_argument(
        "--params",
        default="all",
        choices=("all", "decoder"),
        help="the posteriors' parameters: all of the VAE's, or the decoder's",
    )
    p.add_argument(
        "--epochs", type=positive_int, help="VAE training epochs (digits 50, else 20; --quick 3)"
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--latent", type=positive_int, default=16, help="latent dimension")
    p.add_argument("--width", type=positive_int, help="vae_mlp hidden width (512; --quick 64)")
    p.add_argument("--channels", type=positive_int, help="vae_conv channels (32; --quick 8)")
    p.add_argument("--n-train", type=positive_int, help="train on a seeded subset of this size")
    p.add_argument(
        "--n-eval",
        type=positive_int,
        help="test and OOD images evaluated, each a seeded subset (2000; --quick 100)",
    )
    p.add_argument(
        "--n-samples", type=positive_int, help="posterior samples per image (16; --quick 4)"
    )
    p.add_argument(
        "--sampled",
        action="store_true",
        help="predict with sampled networks instead of the linearised predictive",
    )
    p.add_argument(
        "--solver",
        default="auto",
        choices=("auto", "gram", "gram_float32", "nystrom", "krylov"),
        help=(
            "projection solver (auto: the dense Gram when it fits in --memory-gb in float64, "
            "else CG preconditioned by its float32 Cholesky factor when that fits, else Nyström)"
        ),
    )
    p.add_argument(
        "--memory-gb",
        type=positive_float,
        default=None,
        help=(
            "memory for the projection's kernel matrices: the dense Gram needs 16·N² bytes, "
            "its float32 factor 4·N² (default: 60%% of physical memory)"
        ),
    )
    p.add_argument("--checkpoint", help="load trained VAE weights instead of training")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted training from OUT/vae.pt"
    )
    p.add_argument("--ood-data-dir", help="directory with the OOD data set's files")
    add_run_options(p, "generative")
    p.set_defaults(run=_run_generative)


def _run_generative(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.generative.report import PLOTS, format_table
    from tacitbayes.experiments.generative.run import GenerativeSettings, run_generative

    results = run_generative(settings_from_args(GenerativeSettings, args))
    post = results["methods"]["projected"]["n_params"]
    headline = (
        f"{results['dataset']} / {results['model']} ({results['n_params']:,} parameters, "
        f"posteriors over {post:,}); OOD: {results['ood_dataset']}, "
        f"{results['predictive']} predictive; NLL bound {results['nll_bound']:.3f} nats"
    )
    return report_run(results, headline, format_table(results), PLOTS)
