"""Hone's Kubernetes operator, CLI and API types. Never imports torch."""

__version__ = "0.1.0"
