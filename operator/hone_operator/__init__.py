"""Hone's Kubernetes operator, CLI and API types. Never imports torch."""

from hone_trainer import __version__  # noqa: F401  (one version for the whole distribution)
