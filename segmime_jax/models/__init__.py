"""Segmentation networks in Flax NNX (channels-last): ENet and the residual U-Net of the reference code.

Public API::

    ENet(num_classes=4, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32)
    ResidualUNet(num_classes=2, in_channels=1, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32)
    build_model(name, num_classes, *, rngs, dtype=..., param_dtype=..., in_channels=1)   # "enet" | "residualunet"
    MODELS                                        # name → constructor
    count_params(model) -> int                    # trainable parameters
    forward_flops(model, input_shape) -> float    # XLA cost analysis of the compiled forward pass
    conv_flops(model, input_shape) -> float       # analytic conv FLOPs (2 x multiply-accumulates)
    load_torch_state_dict(model, state_dict)      # reference PyTorch weights (numpy, PyTorch layout)
    export_torch_state_dict(model) -> dict
    max_pool_with_argmax, max_unpool, max_pool    # in segmime_jax.models.pooling

``python -m segmime_jax.models`` prints parameter counts and FLOPs at 256×256.
"""

from segmime_jax.models.analysis import conv_flops, count_params, flops_from_cost_analysis, forward_flops
from segmime_jax.models.enet import ENet, ENetEncoding
from segmime_jax.models.pooling import max_pool, max_pool_with_argmax, max_unpool
from segmime_jax.models.registry import MODELS, SIZE_MULTIPLES, build_model, check_input_size
from segmime_jax.models.residualunet import ResidualUNet
from segmime_jax.models.torch_weights import export_torch_state_dict, load_torch_state_dict

__all__ = [
    "ENet",
    "ENetEncoding",
    "MODELS",
    "ResidualUNet",
    "SIZE_MULTIPLES",
    "build_model",
    "check_input_size",
    "conv_flops",
    "count_params",
    "export_torch_state_dict",
    "flops_from_cost_analysis",
    "forward_flops",
    "load_torch_state_dict",
    "max_pool",
    "max_pool_with_argmax",
    "max_unpool",
]
