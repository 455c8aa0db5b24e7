"""``python -m experiments.acdc`` in a checkout; installed, the same command is ``segmime-acdc``
(:mod:`segmime_jax.commands.acdc`, which documents its options)."""

import sys

from segmime_jax.commands.acdc import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.acdc")
