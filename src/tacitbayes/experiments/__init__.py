"""The CLI's experiments: one sub-package per sub-command, around shared modules.

* ``compare``, ``eos``, ``bound``, ``continual``, ``linsys``, ``generative``: each has
  ``run`` (settings and the experiment), ``cli`` (argparse wiring, torch-free at import)
  and, where it writes one, ``report``;
* shared by all: :mod:`reporting` (table cells, text and Markdown tables, report footer,
  writing the outputs), :mod:`checks` (settings validation), :mod:`cli_types` (argparse
  types and common options), :mod:`runtime` (threads, versions).
"""
