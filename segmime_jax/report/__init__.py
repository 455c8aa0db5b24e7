"""Generic tables and figures that the experiments write (paper Table 1, Figures 2-4); the gradient study behind
Figure 1 is :mod:`segmime_jax.paper.gradient_study`."""
