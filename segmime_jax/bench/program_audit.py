"""What XLA made of a compiled step: how many kernels it launches, donation, host transfers, op mix.

The figures come from the *optimised* HLO (``compiled.as_text()``) and ``compiled.memory_analysis()``, so
they describe the program the backend will run, not the traced one:

- ``kernels``: instructions of the entry computation (and of the bodies of its loops, conditionals and calls,
  e.g. XLA:GPU's command buffers; an XLA:CPU "small call" is one kernel) that do work, i.e. not
  ``parameter``, ``constant``, ``tuple``, ``get-tuple-element`` or ``bitcast``. On a GPU
  each is roughly one kernel launch (a fusion, a cuDNN/cuBLAS custom call, a copy), so this is the number to
  hold against a step's time when launch overhead is suspected. Loop bodies are counted once, not per
  iteration.
- ``top_level_ops``: the same instructions by opcode; ``custom_call_targets``: which library kernels
  (``__cudnn$convForward``, ``__cublas$gemm``, …) the custom calls are.
- ``all_ops``: counts of a few opcodes anywhere, fusion bodies included (``gather``/``scatter`` would mean
  the max-unpooling became a scatter; ``transpose`` shows layout changes; ``all-reduce`` the data-parallel
  gradient and BatchNorm reductions).
- ``host_transfers``: ``infeed``/``outfeed``/``send``/``recv`` and host-callback custom calls: a train step
  should have none (a host round trip per step stalls the device).
- ``donated_bytes`` / ``donatable_bytes``: bytes XLA aliases from inputs to outputs against the bytes of the
  arguments meant to be donated (the train state): equal means the state is updated in place.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import jax

from segmime_jax.bench.device_info import aliased_bytes

_TRIVIAL = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"})
_HOST_TRANSFER = frozenset({"infeed", "outfeed", "send", "recv", "send-done", "recv-done"})
_TRACKED = (
    "convolution",
    "dot",
    "gather",
    "scatter",
    "transpose",
    "copy",
    "rng-bit-generator",
    "while",
    "all-reduce",
    "all-reduce-start",
)

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")
_CALLED = re.compile(r"\b(body|condition|true_computation|false_computation|to_apply|calls)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def _computations(hlo_text: str) -> tuple[str | None, dict[str, list[tuple[str, str]]]]:
    """``(entry name, {computation: [(opcode, rest of line), ...]})`` parsed from HLO text."""
    entry, current, comps = None, None, {}
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("(", 1)[0]:
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is not None:
            inst = _INSTRUCTION.match(line)
            if inst:
                comps[current].append((inst.group(1), inst.group(2)))
    return entry, comps


def _is_small_call(rest: str) -> bool:
    return 'xla_cpu_small_call="true"' in rest


def _launch_level(entry: str, comps: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Instructions of the entry computation and of the control-flow computations it reaches (loop bodies
    and conditions, conditional branches, plain calls), not of fusion bodies or reduction lambdas."""
    seen, todo, out = set(), [entry], []
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for opcode, rest in comps[name]:
            out.append((opcode, rest))
            for kind, callee in _CALLED.findall(rest):
                # a call's callee runs at launch level too: XLA:GPU puts runs of kernels into command buffers,
                # `call(...), to_apply=%command_buffer`; async-start names its callee with calls=. Not XLA:CPU's
                # small calls (xla_cpu_small_call="true"): each is compiled into one kernel.
                if kind in ("body", "condition", "true_computation", "false_computation") or (
                    kind in ("calls", "to_apply") and opcode in ("call", "async-start") and not _is_small_call(rest)
                ):
                    todo.append(callee)
            for group in _BRANCHES.findall(rest):
                todo.extend(name.strip().lstrip("%") for name in group.split(","))
    return out


def audit_hlo_text(hlo_text: str) -> dict[str, Any]:
    """Kernel count, op mix and host transfers of optimised HLO text (see the module docstring)."""
    entry, comps = _computations(hlo_text)
    if entry is None:
        raise ValueError("no ENTRY computation found in the HLO text")
    launched = [(op, rest) for op, rest in _launch_level(entry, comps) if op not in _TRIVIAL]
    top = collections.Counter(op for op, _ in launched)
    targets = collections.Counter(m for op, rest in launched if op == "custom-call" for m in _TARGET.findall(rest))
    everything = collections.Counter(op for body in comps.values() for op, _ in body)
    host = sum(top[op] for op in _HOST_TRANSFER) + sum(n for t, n in targets.items() if "callback" in t.lower())
    return {
        "kernels": sum(n for op, n in top.items() if op not in ("while", "conditional", "call"))
        + sum(1 for op, rest in launched if op == "call" and _is_small_call(rest)),
        "top_level_ops": dict(top.most_common()),
        "custom_call_targets": dict(targets.most_common()),
        "all_ops": {op: everything[op] for op in _TRACKED},
        "host_transfers": host,
    }


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays in a pytree (global shapes)."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))


def audit_compiled(compiled: Any, *, donated: Any = None, hlo_text: str | None = None) -> dict[str, Any]:
    """:func:`audit_hlo_text` of a ``jax.stages.Compiled``, plus donation: ``donated_bytes`` (XLA's aliased
    bytes) against ``donatable_bytes`` (the bytes of ``donated``, the arguments passed with donation) and
    ``fully_donated``. Per device: with a replicated state, both are one replica's bytes. ``hlo_text``: the
    program's ``compiled.as_text()`` when the caller already has it."""
    audit = audit_hlo_text(compiled.as_text() if hlo_text is None else hlo_text)
    donated_bytes = aliased_bytes(compiled)
    donatable = None if donated is None else tree_bytes(donated)
    audit.update(
        donated_bytes=donated_bytes,
        donatable_bytes=donatable,
        fully_donated=None if donated_bytes is None or donatable is None else donated_bytes >= donatable,
    )
    return audit
