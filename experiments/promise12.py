"""``python -m experiments.promise12`` in a checkout; installed, the same command is ``segmime-promise12``
(:mod:`segmime_jax.commands.promise12`, which documents its options)."""

import sys

from segmime_jax.commands.promise12 import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.promise12")
