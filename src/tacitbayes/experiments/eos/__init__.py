"""``tacitbayes eos``: sharpness at the edge of stability for GD, variational GD and IVON (run, cli, report)."""
