"""``tacitbayes generative``: the loss-projected posterior of a VAE against diagonal Laplace and the ELBO (run, evaluate, grids, report, cli)."""
