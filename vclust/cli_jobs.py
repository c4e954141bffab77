"""Commands that run the clustering jobs: fit, label, export, run, demo."""

from __future__ import annotations


def register(sub, add_cluster_args):
    """Add the job commands to the ``vclust`` parser."""
