"""Hone's trainer: data validation, DeepSpeed training and the built-in server.

Importing the package is cheap and torch-free; heavy modules are imported only
by the commands that need them.
"""

#: Hone's version, the one place it is written (``pyproject.toml`` reads it from here).
__version__ = "0.1.0"
