"""Several processes, one program: start-up of JAX's distributed runtime and the few rules that go with it.

A run over N processes (N hosts, or N processes on one host) is the same program in every process. After
:func:`initialize`, ``jax.devices()`` lists the devices of *all* processes and the training step runs on a
global mesh over them (:mod:`segmime_jax.train.sharding`): the state replicated, each global batch split over
the devices, the gradient and the BatchNorm statistics reduced over the global batch, so the numbers are those
of one device. Each process feeds only its own rows of every global batch
(:func:`segmime_jax.train.sharding.place`); outputs that exist once (tables, figures, JSON, NIfTI predictions,
``metrics.jsonl``) are written by process 0 (:func:`is_primary`), checkpoints by all processes together through
orbax's multi-process path, and logs and progress bars come from process 0 only.

Launch (see docs/training.md): every process gets the same command line plus ``--coordinator HOST:PORT
--num-processes N --process-id I``; or ``--distributed auto`` (the default) lets
``jax.distributed.initialize()`` read SLURM, Open MPI or a TPU pod's environment. On CPU the processes use gloo
collectives. A process that dies makes the others stop after ``--heartbeat-timeout-s`` (JAX's coordination
service ends them, non-zero); a coordinator that never answers ends the others with a ConnectionError after
``--init-timeout-s``, processes that never all join (a duplicate ``--process-id``) are ended by JAX after the
same time, and a ``--num-processes`` other than the coordinator's is a ValueError: a bounded wait, never a
silent hang.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from segmime_jax.cli import AT_LEAST_ONE, NON_NEGATIVE, check_options, option

T = TypeVar("T")

MODES = ("auto", "off")
#: Environment variables that announce a multi-process launch jax.distributed.initialize() can read.
_CLUSTER_MARKERS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (every experiment's command line has these options)."""

    distributed: str = option(
        "auto",
        "multi-process start-up: auto (read SLURM, Open MPI or TPU-pod settings, or --coordinator; a single "
        "process otherwise) or off",
        choices=MODES,
    )
    coordinator: str | None = option(
        None, "HOST:PORT of process 0's coordination service, for a manual launch", metavar="HOST:PORT"
    )
    num_processes: int | None = option(None, "number of processes, for a manual launch", within=AT_LEAST_ONE)
    process_id: int | None = option(
        None, "this process's index in [0, num-processes), for a manual launch", within=NON_NEGATIVE
    )
    init_timeout_s: int = option(120, "seconds to wait for every process to join before giving up", within=AT_LEAST_ONE)
    heartbeat_timeout_s: int = option(
        60, "seconds without a heartbeat after which a process counts as dead", within=AT_LEAST_ONE
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.distributed not in MODES:
            raise ValueError(f"--distributed must be one of {MODES}, got {self.distributed!r}")
        manual = (self.coordinator, self.num_processes, self.process_id)
        if any(v is not None for v in manual) and not all(v is not None for v in manual):
            raise ValueError("a manual launch needs all of --coordinator, --num-processes and --process-id")
        if self.coordinator is not None:
            if self.distributed == "off":
                raise ValueError("--coordinator was given with --distributed off")
            if not _ADDRESS.match(self.coordinator) or not 0 < int(self.coordinator.rsplit(":", 1)[1]) < 65536:
                raise ValueError(f"--coordinator must be HOST:PORT, got {self.coordinator!r}")
            if not 0 <= self.process_id < self.num_processes:
                raise ValueError(f"--process-id must be in [0, {self.num_processes}), got {self.process_id}")

    @property
    def manual(self) -> bool:
        return self.coordinator is not None


def initialize(config: DistributedConfig | None = None) -> None:
    """Join the multi-process run ``config`` describes (nothing for a single process); call it before any JAX
    computation. Idempotent: a second call, or a call after JAX's runtime was started some other way, does
    nothing.

    Args:
      config: the launch; default ``DistributedConfig()`` (``auto``: a cluster's environment, else one process).

    Raises:
      RuntimeError: a multi-process launch was asked for after JAX had already computed something in this process.
    """
    config = DistributedConfig() if config is None else config
    if config.distributed == "off" or jax.distributed.is_initialized():
        return
    if not config.manual and not any(name in os.environ for name in _CLUSTER_MARKERS):
        return  # auto, and no launcher around: a single process
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "the multi-process start-up must come before any JAX computation in this process "
            "(call segmime_jax.distributed.initialize first)"
        )
    # CPU processes exchange their collectives through gloo (no effect on GPU or TPU devices).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {
        "initialization_timeout": config.init_timeout_s,
        "heartbeat_timeout_seconds": config.heartbeat_timeout_s,
    }
    if config.manual:
        kwargs.update(
            coordinator_address=config.coordinator,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
        if config.process_id != 0:
            _wait_for_coordinator(config.coordinator, config.init_timeout_s)
    jax.distributed.initialize(**kwargs)
    if config.manual and jax.process_count() != config.num_processes:
        raise ValueError(
            f"--num-processes {config.num_processes}, but the coordinator at {config.coordinator} was started for "
            f"{jax.process_count()} processes: give every process the same --num-processes"
        )


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once ``address`` accepts TCP connections; ConnectionError after ``timeout_s`` (JAX's own wait
    would end the process with an abort and a stack trace)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"the coordinator {address} (process 0) did not answer within {timeout_s:g} s ({err}); is "
                    "process 0 running, and are the address and port the same for every process?"
                ) from None
            time.sleep(0.5)


def process_count() -> int:
    """The number of processes of the run (1 without :func:`initialize`)."""
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run's single outputs and logs (process 0)."""
    return jax.process_index() == 0


def process_label() -> str:
    """``"process I of N: "`` in a multi-process run (a prefix for error messages), ``""`` otherwise."""
    if jax.process_count() == 1:
        return ""
    return f"process {jax.process_index()} of {jax.process_count()}: "


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing for a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def primary_first(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` in process 0 first, then in the others: for work that writes shared files which the others
    then read (a dataset generated into a cache, preprocessing). Single process: just ``fn()``."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    barrier(f"{name}: written")
    if not is_primary():
        result = fn()
    barrier(f"{name}: read")
    return result  # type: ignore[return-value]
