"""The `vidpipe` command line: one module per command, each with `register(sub, name, help)`;
main.py holds the parser and the exit-code handling.

`python -m pipeline.cli` runs it; the console script is `pipeline.cli.main:main`.
"""
