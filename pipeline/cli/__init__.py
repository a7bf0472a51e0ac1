"""The `vidpipe` command line: one module per command (main.py holds `run` and the parser).

`python -m pipeline.cli` runs it; the console script is `pipeline.cli.main:main`.
"""
