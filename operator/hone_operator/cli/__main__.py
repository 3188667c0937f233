"""``python -m hone_operator.cli``: the ``hone`` command without its console script."""

from hone_operator.cli import main

main()
