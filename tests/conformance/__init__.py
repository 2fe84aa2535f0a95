"""Conformance suite: every posterior and predictive of tacitbayes on the loaders and models users bring.

A package (not loose test files) so that ``test_models.py`` here does not clash with
``tests/models/test_models.py`` under pytest's default import mode.
"""
