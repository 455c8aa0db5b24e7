"""The paper's studies: the loss × optimiser × seed grid behind Table 1 and Figures 2-4
(:mod:`segmime_jax.paper.grid`)."""
