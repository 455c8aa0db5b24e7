"""``python -m experiments.device_check`` in a checkout; installed, the same command is ``segmime-device-check``
(:mod:`segmime_jax.commands.device_check`, which documents its options)."""

import sys

from segmime_jax.commands.device_check import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.device_check")
