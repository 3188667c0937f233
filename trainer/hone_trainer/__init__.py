"""Hone's trainer: data validation, DeepSpeed training and the built-in server.

Importing the package is cheap and torch-free; heavy modules are imported only
by the commands that need them.
"""

__version__ = "0.1.0"
