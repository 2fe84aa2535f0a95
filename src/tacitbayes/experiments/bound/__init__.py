"""``tacitbayes bound``: PAC-Bayes bounds with learned Kronecker priors (run, cli, report)."""
