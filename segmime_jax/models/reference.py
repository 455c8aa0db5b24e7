"""The Flax models against the original PyTorch ones: fixtures computed by LIVIAETS/boundary-loss's ``networks.py``
(``tests/fixtures`` in the repository, with a README giving their recipe).

* :func:`reference_state_dict` rebuilds the reference weights from a state-dict TSV (README recipe).
* :func:`logits_error` compares the eval-mode logits alone (in ``make test``, in float32).
* :func:`compare_with_fixture` runs a loaded model in eval mode on the fixture inputs and returns the
  relative errors of the logits and of the input gradient d sum(logits·R)/d input, where
  relative error = max|ours − reference| / max|reference|.
* In float32, the ResidualUNet fixtures hold pre-ReLU activations of ~1e-6 that another summation order (XLA:CPU's
  YNNPACK convolutions, some CPUs' own vector code, cuDNN) moves across zero, which changes the input gradient by
  ~1e-2 relative although both orders are right. :func:`fixture_errors_float64` therefore compares the models
  computed in float64 (a subprocess with ``jax_enable_x64``): the architecture check, independent of the machine.
* :func:`ynn_convolutions_active` tells whether XLA:CPU lowers convolutions to YNNPACK here; the float32
  comparison (the device check's) runs with ``--xla_cpu_experimental_ynn_fusion_type=`` (YNN fusions off), in a
  subprocess when needed.

Run as ``python -m segmime_jax.models.reference [REFERENCE_DIR [PRECISION]]`` (default folder: ``tests/fixtures``
of the current directory) it prints the errors of all four cases as JSON; PRECISION is the jax default matmul
precision of a float32 comparison (default ``highest``; on a GPU, ``default`` shows what TF32 convolutions cost),
or ``float64`` for the comparison in float64.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.environment import child_process_environment
from segmime_jax.models.enet import ENet
from segmime_jax.models.residualunet import ResidualUNet
from segmime_jax.models.torch_weights import load_torch_state_dict

REFERENCE_FIXTURES = pathlib.Path("tests") / "fixtures"  # in a checkout, relative to its root
TSV = {"enet": "enet_1to4_state_dict.tsv", "residualunet": "residualunet_1to2_state_dict.tsv"}
NO_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def read_tsv(path: pathlib.Path) -> list[tuple[str, tuple[int, ...] | None, str]]:
    """Rows ``(key, shape or None for scalars, kind)`` of a reference state-dict TSV, in order."""
    rows = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, kind = line.split("\t")
        rows.append((key, None if shape == "scalar" else tuple(int(s) for s in shape.split("x")), kind))
    return rows


def reference_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The README recipe: row i (0-based, all rows counted) → a deterministic float32 tensor."""
    rows = read_tsv(path)
    keys = {key for key, _, _ in rows}
    state = {}
    for i, (key, shape, _) in enumerate(rows):
        if shape is None:  # num_batches_tracked: no value
            continue
        z = np.random.default_rng(i).standard_normal(shape)
        value = z / np.sqrt(np.prod(shape[1:])) if len(shape) == 4 else 0.1 * z
        if key.endswith("running_var"):
            value = np.abs(value) + 0.5
        if key.endswith(".weight") and key[: -len("weight")] + "running_mean" in keys:
            value = value + 1.0
        state[key] = value.astype(np.float32)
    return state


def reference_model(name: str, reference_dir: pathlib.Path, dtype=jnp.float32) -> nnx.Module:
    """ENet(4 classes) or ResidualUNet(2 classes) with the rebuilt reference weights, in eval mode, computing in
    ``dtype``."""
    model = ENet(4, rngs=nnx.Rngs(0), dtype=dtype) if name == "enet" else ResidualUNet(2, rngs=nnx.Rngs(0), dtype=dtype)
    load_torch_state_dict(model, reference_state_dict(reference_dir / TSV[name]))
    model.eval()
    return model


def relative_error(ours, reference) -> float:
    """max|ours − reference| / max|reference|."""
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


def logits_error(model: nnx.Module, name: str, case: int, reference_dir: pathlib.Path) -> float:
    """Relative error of the eval-mode logits alone for ``{name}_*_{case}`` of the fixture (no backward pass)."""
    with np.load(reference_dir / "forward_fixture.npz") as fixture:
        x, logits = (fixture[f"{name}_{what}_{case}"].transpose(0, 2, 3, 1) for what in ("input", "logits"))
    graphdef, state = nnx.split(model)
    y = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, jnp.asarray(x))
    return relative_error(y, logits)


def compare_with_fixture(model: nnx.Module, name: str, case: int, reference_dir: pathlib.Path) -> dict[str, float]:
    """Relative errors of eval-mode logits and input gradient for ``{name}_*_{case}`` of the fixture."""
    with np.load(reference_dir / "forward_fixture.npz") as fixture:
        x, logits, cotangent, grad = (
            fixture[f"{name}_{what}_{case}"].transpose(0, 2, 3, 1)
            for what in ("input", "logits", "cotangent", "input_grad")
        )
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward_and_vjp(state, x, r):
        y, vjp = jax.vjp(lambda x: nnx.merge(graphdef, state)(x), x)
        return y, vjp(r)[0]

    compute = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    state = jax.tree.map(lambda v: v.astype(compute) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)
    y, g = forward_and_vjp(state, jnp.asarray(x, compute), jnp.asarray(cotangent, jnp.float32))
    return {"logits": relative_error(y, logits), "input_grad": relative_error(g, grad)}


def ynn_convolutions_active() -> bool:
    """Whether XLA:CPU compiles convolutions into YNNPACK fusions in this process (1×1 and 3×3 probes)."""
    if jax.default_backend() != "cpu":
        return False

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    for x_shape, w_shape in (((1, 24, 20, 16), (1, 1, 16, 64)), ((1, 12, 10, 32), (3, 3, 32, 32))):
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
        w = jax.ShapeDtypeStruct(w_shape, jnp.float32)
        if '"__ynn' in jax.jit(conv).lower(x, w).compile().as_text():
            return True
    return False


def all_cases(reference_dir: pathlib.Path) -> dict[str, dict[str, float]]:
    """The errors of the four cases, computed in float64 when jax_enable_x64 is on, else in float32."""
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    results = {}
    for name in ("enet", "residualunet"):
        model = reference_model(name, reference_dir, dtype)
        for case in (0, 1):
            results[f"{name}_{case}"] = compare_with_fixture(model, name, case, reference_dir)
    return results


def all_cases_without_ynn(
    reference_dir: pathlib.Path, timeout: float = 600, *, precision: str | None = None
) -> dict[str, dict[str, float]]:
    """:func:`all_cases` in this process if YNN convolutions are off, else in a subprocess with them off.

    ``precision`` is passed on to that subprocess as its jax default matmul precision (in this process it
    is whatever the caller configured).
    """
    if not ynn_convolutions_active():
        return all_cases(reference_dir)
    env = child_process_environment()
    if NO_YNN_FLAG in env.get("XLA_FLAGS", ""):
        raise RuntimeError(f"YNN convolutions are still active with XLA_FLAGS={env['XLA_FLAGS']}")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + NO_YNN_FLAG).strip()
    return _in_subprocess(reference_dir, [precision] if precision else [], env, timeout)


def fixture_errors_float64(reference_dir: pathlib.Path, timeout: float = 600) -> dict[str, dict[str, float]]:
    """:func:`all_cases` with the models computing in float64, in a subprocess (x64 is process-wide)."""
    return _in_subprocess(reference_dir, ["float64"], child_process_environment(), timeout)


def _in_subprocess(
    reference_dir: pathlib.Path, args: list[str], env: dict[str, str], timeout: float
) -> dict[str, dict[str, float]]:
    """The JSON this module prints when run as ``python -m segmime_jax.models.reference REFERENCE_DIR *args``."""
    done = subprocess.run(
        [sys.executable, "-m", "segmime_jax.models.reference", str(reference_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fixture comparison subprocess failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # The tests' jax configuration without the compilation cache: this also runs on a GPU machine.
    reference = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE_FIXTURES
    precision = sys.argv[2] if len(sys.argv) > 2 else "highest"
    if precision == "float64":
        jax.config.update("jax_enable_x64", True)
        print(json.dumps(all_cases(reference)))
    else:
        jax.config.update("jax_enable_x64", False)
        jax.config.update("jax_default_matmul_precision", precision)
        print(json.dumps(all_cases_without_ynn(reference, precision=precision)))
