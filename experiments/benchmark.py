"""``python -m experiments.benchmark`` in a checkout; installed, the same command is ``segmime-benchmark``
(:mod:`segmime_jax.commands.benchmark`, which documents its options)."""

import sys

from segmime_jax.commands.benchmark import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.benchmark")
