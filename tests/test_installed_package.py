"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment,
its commands run from a folder outside the checkout.

The wheel is built with pip (build isolation: setuptools from the local pip cache or the package index) and
installed without its dependencies; the environment sees the dependencies of this checkout's environment through
a plain path entry (no ``.pth`` processing, so this checkout's editable install stays invisible), and each test
checks that ``segmime_jax`` is imported from the new environment.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import venv

import pytest
from helpers import REFERENCE_FIXTURES, REPO_ROOT

pytestmark = pytest.mark.slow

LOSS_EXAMPLE = """
import jax, jax.numpy as jnp
from segmime_jax.losses import dice_loss, mime_loss
labels = jnp.zeros((1, 8, 8), jnp.int32).at[0, 2:6, 2:6].set(1)
target = jax.nn.one_hot(labels, 2)
probs = jax.nn.softmax(3.0 * (2 * target - 1) + jax.random.normal(jax.random.key(0), target.shape), axis=-1)
print(float(dice_loss(probs, target)), float(mime_loss(probs, target, a=1.9, b=0.1)))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A virtual environment with this checkout's wheel installed; its python, scripts folder and a work folder."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies of this checkout's environment, as a plain path line: its .pth files (among them this
    # checkout's editable install) are not processed
    (pathlib.Path(purelib) / "checkout_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("segmime_jax-*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    work = root / "work"
    work.mkdir()
    return {"python": python, "bin": env_dir / "bin", "work": work, "purelib": purelib}


def run(installed: dict, *command: str, timeout: float = 600) -> str:
    """Run ``command`` in the work folder (outside the checkout) with the environment's scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{installed['bin']}{os.pathsep}{env['PATH']}"
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        list(command), cwd=installed["work"], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr}"
    return done.stdout


def test_the_package_comes_from_the_wheel_and_the_loss_example_runs(installed):
    where = run(installed, str(installed["python"]), "-c", "import segmime_jax; print(segmime_jax.__file__)")
    assert where.strip().startswith(installed["purelib"])
    dice, mime = (float(x) for x in run(installed, str(installed["python"]), "-c", LOSS_EXAMPLE).split())
    assert 0 < dice < 1 and mime < 0


def test_models_summary_and_commands_help(installed):
    summary = run(installed, str(installed["python"]), "-m", "segmime_jax.models")
    assert "19,645,250" in summary and "458,281" in summary
    for command in ("segmime-acdc", "segmime-promise12", "segmime-gradients", "segmime-mime-study"):
        assert "usage: " + command in run(installed, command, "--help")


def test_one_epoch_of_training_on_synthetic_data(installed):
    run(
        installed,
        "segmime-acdc",
        "--synthetic-cases",
        "5",
        "--synthetic-zoom",
        "1",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--losses",
        "dsc",
        "--num-examples",
        "1",
        "--out",
        "acdc",
    )
    results = json.loads((installed["work"] / "acdc" / "results.json").read_text())
    assert set(results["runs"]) == {"adam-dsc-seed0"}
    assert (installed["work"] / ".cache" / "synthetic").is_dir()  # relative to where it ran, not the checkout


def test_benchmark_quick_and_the_gpu_check(installed):
    run(installed, "segmime-benchmark", "--quick", "--models", "enet", "--out", "bench")
    assert json.loads((installed["work"] / "bench" / "benchmark.json").read_text())["cases"]
    run(
        installed,
        "segmime-device-check",
        "--quick",
        "--models",
        "enet",
        "--out",
        "check",
        "--work",
        "check-work",
        "--reference",
        str(REFERENCE_FIXTURES),
        "--bf16-timeout-s",
        "0",
        "--cmdbuf-timeout-s",
        "0",
        "--fp32-residualunet-timeout-s",
        "0",
        "--fixture-timeout-s",
        "300",
    )
    fixture = json.loads((installed["work"] / "check" / "fixture.json").read_text())
    assert fixture["highest"]["enet_0"]["logits"] < 1e-4, fixture
