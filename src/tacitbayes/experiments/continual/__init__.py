"""``tacitbayes continual``: continual learning with Laplace and learned priors (run, sequence, cli, report)."""
