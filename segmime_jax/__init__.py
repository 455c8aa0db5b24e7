"""segmime_jax: the Dice loss gradient and the ways to mimic it, in JAX/Flax.

Layers, from the bottom up (each imports only from the layers before it):

- :mod:`segmime_jax.losses`, :mod:`segmime_jax.gradients`: pure loss functions and their gradient analysis;
- :mod:`segmime_jax.models`: ENet and the residual U-Net (Flax NNX);
- :mod:`segmime_jax.data`: ACDC and PROMISE12 loaders, synthetic datasets, the input pipeline;
- :mod:`segmime_jax.train`: optimisers, train/eval steps, metrics, checkpoints, the training engine;
- :mod:`segmime_jax.paper`: the paper's studies, their tables and figures (the grid behind Table 1 and Figures
  2-4, the gradient study of §2, the mime study).
"""

__version__ = "0.1.0"
