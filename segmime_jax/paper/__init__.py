"""The paper's studies: the loss × optimiser × seed grid behind Table 1 and Figures 2-4
(:mod:`segmime_jax.paper.grid`; its options and runs as data in :mod:`segmime_jax.paper.grid_config`, a leaf
that the modules training, measuring and reporting a grid import, with no import cycle), the gradient study of
§2 (:mod:`segmime_jax.paper.gradient_study`) and the mime study (:mod:`segmime_jax.paper.mime_study`)."""
