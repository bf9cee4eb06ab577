"""Analyses reproducing the MoA paper's questions on the toolkit (see analysis/README.md).

A package only so the scripts can share ``analysis.common`` and the tests can import them; each
script is run as ``python analysis/<name>.py``.
"""
