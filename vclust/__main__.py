"""``python -m vclust``: the command line."""

from .cli import run

run()
