"""``python -m experiments.mime_study`` in a checkout; installed, the same command is ``segmime-mime-study``
(:mod:`segmime_jax.commands.mime_study`, which documents its options)."""

import sys

from segmime_jax.commands.mime_study import main

if __name__ == "__main__":
    main(sys.argv[1:], prog="python -m experiments.mime_study")
