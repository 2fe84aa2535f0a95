"""``tacitbayes compare``: MAP, the baselines and every posterior on one data set (run, cli, report, the method registry and one module per method family)."""
