"""``python -m experiments.gradients`` in a checkout; installed, the same command is ``segmime-gradients``
(:mod:`segmime_jax.commands.gradients`, which documents its options)."""

import sys

from segmime_jax.commands.gradients import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.gradients")
