"""The paper's studies: the loss × optimiser × seed grid behind Table 1 and Figures 2-4, with its report
(the package :mod:`segmime_jax.paper.grid`), the gradient study of §2 (:mod:`segmime_jax.paper.gradient_study`)
and the mime study (:mod:`segmime_jax.paper.mime_study`); :mod:`segmime_jax.paper.plotting` sets up matplotlib
for all three."""
