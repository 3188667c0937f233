"""``python -m hone_operator``: run the operator with the namespaces from its settings."""

from hone_operator.startup import run_operator

if __name__ == "__main__":
    run_operator()
