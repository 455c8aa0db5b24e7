"""``python -m segmime_jax.data.synthetic``: see :func:`segmime_jax.data.synthetic.cli.main`."""

from segmime_jax.data.synthetic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
