"""``tacitbayes linsys``: the implicit bias of initialization in underdetermined linear systems (run, studies, cli)."""
