"""The benchmark's analyses of a compiled program (kernels, donation, host transfers) and of a profile."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.bench.profile import op_category, op_group, summarize_events, summarize_profile
from segmime_jax.bench.program_audit import audit_compiled, audit_hlo_text

HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_add (p0: f32[8], p1: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[8]{0} parameter(1)
  ROOT %add.1 = f32[8]{0} add(%p0, %p1)
}

%body (arg: (s32[], f32[8])) -> (s32[], f32[8]) {
  %arg = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = f32[8]{0} get-tuple-element(%arg), index=1
  %y = f32[8]{0} fusion(%x, %x), kind=kLoop, calls=%fused_add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %y)
}

%cond (arg.1: (s32[], f32[8])) -> pred[] {
  %arg.1 = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main.3 (x.1: f32[8]) -> f32[8] {
  %x.1 = f32[8]{0} parameter(0)
  %conv.2 = f32[8]{0} custom-call(%x.1), custom_call_target="__cudnn$convForward"
  %cb = f32[8]{0} custom-call(%conv.2), custom_call_target="xla_ffi_python_gpu_callback"
  %init = (s32[], f32[8]{0}) tuple(%x.1, %cb)
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
  %g = f32[8]{0} get-tuple-element(%w), index=1
  ROOT %copy.4 = f32[8]{0} copy(%g)
}
"""


def test_audit_counts_launch_level_ops_only():
    audit = audit_hlo_text(HLO)
    # ENTRY: 2 custom calls, while, copy; loop body: 1 fusion (its add is inside the fusion, not a launch).
    assert audit["top_level_ops"] == {"custom-call": 2, "while": 1, "copy": 1, "fusion": 1}
    assert audit["kernels"] == 4  # the while itself launches nothing
    assert audit["custom_call_targets"] == {"__cudnn$convForward": 1, "xla_ffi_python_gpu_callback": 1}
    assert audit["host_transfers"] == 1
    assert audit["all_ops"]["while"] == 1 and audit["all_ops"]["gather"] == 0
    with pytest.raises(ValueError, match="ENTRY"):
        audit_hlo_text("HloModule empty")


# XLA:GPU moves runs of kernels into command buffers, called from the entry computation with to_apply=.
COMMAND_BUFFER_HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_convert (p0: bf16[8]) -> f32[8] {
  %p0 = bf16[8]{0} parameter(0)
  ROOT %convert.1 = f32[8]{0} convert(%p0)
}

%command_buffer (p: bf16[8]) -> (f32[8], f32[8]) {
  %p = bf16[8]{0} parameter(0)
  %f = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_convert
  %cudnn = (f32[8]{0}, u8[0]{0}) custom-call(%f), custom_call_target="__cudnn$convForward"
  %g = f32[8]{0} get-tuple-element(%cudnn), index=0
  ROOT %t = (f32[8]{0}, f32[8]{0}) tuple(%f, %g)
}

ENTRY %main.9 (x.1: bf16[8]) -> f32[8] {
  %x.1 = bf16[8]{0} parameter(0)
  %call = (f32[8]{0}, f32[8]{0}) call(%x.1), to_apply=%command_buffer
  ROOT %r = f32[8]{0} get-tuple-element(%call), index=1
}
"""


def test_audit_counts_kernels_inside_command_buffers():
    audit = audit_hlo_text(COMMAND_BUFFER_HLO)
    assert audit["kernels"] == 2  # the fusion and the cuDNN call; the call itself launches nothing
    assert audit["top_level_ops"] == {"call": 1, "fusion": 1, "custom-call": 1}
    assert audit["custom_call_targets"] == {"__cudnn$convForward": 1}

    # XLA:CPU's small calls are compiled into one kernel each: not followed, counted once
    small = COMMAND_BUFFER_HLO.replace(
        "to_apply=%command_buffer", 'to_apply=%command_buffer, frontend_attributes={xla_cpu_small_call="true"}'
    )
    audit = audit_hlo_text(small)
    assert audit["kernels"] == 1 and audit["top_level_ops"] == {"call": 1}


def test_audit_of_compiled_functions_sees_donation_and_callbacks():
    x = jnp.arange(256.0)
    donating = jax.jit(lambda v: v * 2.0 + 1.0, donate_argnums=0).lower(x).compile()
    audit = audit_compiled(donating, donated=x)
    assert audit["donatable_bytes"] == 1024 and audit["fully_donated"] is True and audit["host_transfers"] == 0
    keeping = jax.jit(lambda v: v * 2.0 + 1.0).lower(x).compile()
    assert audit_compiled(keeping, donated=x)["fully_donated"] is False

    def with_callback(v):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(v.shape, v.dtype), v) + 1.0

    assert audit_compiled(jax.jit(with_callback).lower(x).compile())["host_transfers"] >= 1


def test_op_names_and_categories():
    assert op_group("loop_add_fusion.12") == "loop_add_fusion"
    assert op_group("convolution.151.3") == "convolution"
    assert op_category("cudnn-conv-bias-activation") == "convolution"
    assert op_category("cublas-gemm") == "matmul"
    assert op_category("all-reduce-start") == "collective"
    assert op_category("input_reduce_fusion") == "reduction"
    assert op_category("input_reduce_fusion") == "reduction"
    assert op_category("transpose_copy_fusion") == "copy/transpose"
    assert op_category("loop_multiply_fusion") == "other fusion"
    assert op_category("while") == "other"
    # "convert" is not a convolution (bfloat16 steps have many convert fusions)
    assert op_category("loop_convert_fusion") == "other fusion" and op_category("wrapped_convert") == "other"
    assert op_category("convert_reduce_fusion") == "reduction"
    assert op_category("convolution_convert_fusion") == "convolution"
    # cuDNN kernel names, where no hlo_op stat names the XLA op
    assert op_category("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc") == "convolution"
    assert op_category("sm80_xmma_wgrad_implicit_gemm_indexed") == "convolution"


def test_summary_per_step_figures():
    events = [("conv.1", 3e6), ("conv.2", 1e6), ("loop_add_fusion.1", 2e6), ("copy.3", 2e6)] * 2  # 2 steps
    summary = summarize_events(events, steps=2, wall_s=0.016, source="test")
    assert summary["wall_ms_per_step"] == pytest.approx(8.0)
    assert summary["op_ms_per_step"] == pytest.approx(8.0)
    assert summary["busy_fraction"] == pytest.approx(1.0)
    assert summary["ops_per_step"] == 4
    assert summary["by_category_ms"] == {"convolution": 4.0, "other fusion": 2.0, "copy/transpose": 2.0}
    assert summary["top_ops"][0] == {"op": "conv", "ms_per_step": 4.0, "calls_per_step": 2.0, "share": 0.5}


def _plane(name, lines):
    return types.SimpleNamespace(
        name=name,
        lines=[
            types.SimpleNamespace(
                name=line_name,
                events=[types.SimpleNamespace(name=n, duration_ns=d, stats=stats) for n, d, stats in events],
            )
            for line_name, events in lines
        ],
    )


def test_gpu_shaped_profile_uses_stream_kernels_named_by_hlo_op():
    device = _plane(
        "/device:GPU:0",
        [
            ("XLA Modules", [("jit_train_step", 10e6, [])]),
            ("XLA Ops", [("fusion.1", 4e6, []), ("cudnn-conv.2", 5e6, [])]),
            (
                "Stream #13(Compute)",
                [
                    ("sm90_xmma_fprop", 5e6, [("hlo_op", "cudnn-conv.2")]),
                    ("loop_fusion_kernel", 3e6, [("hlo_op", "fusion.1")]),
                ],
            ),
        ],
    )
    host = _plane("/host:CPU", [("tf_XLAEigen/1", [("convolution.1", 99e6, [])])])
    profile = types.SimpleNamespace(planes=[host, device])
    summary = summarize_profile(profile, steps=1, wall_s=0.010)
    assert summary["source"].startswith("/device:GPU:0 streams")
    assert summary["op_ms_per_step"] == pytest.approx(8.0)  # kernels only, not the module/op lines
    assert summary["busy_fraction"] == pytest.approx(0.8)
    assert [op["op"] for op in summary["top_ops"]] == ["cudnn-conv", "fusion"]


def test_cpu_shaped_profile_uses_thunks_and_rejects_empty_profiles():
    host = _plane(
        "/host:CPU",
        [
            ("python", [("PjitFunction(train_step)", 50e6, [])]),
            (
                "tf_XLAEigen/1",
                [
                    ("ThunkExecutor::Execute", 9e6, []),
                    ("convolution.1", 3e6, []),
                    ("end: ynn_fusion", 1.0, []),
                    ("ynn_fusion.2", 1e6, []),
                ],
            ),
        ],
    )
    summary = summarize_profile(types.SimpleNamespace(planes=[host]), steps=1, wall_s=0.005)
    assert summary["op_ms_per_step"] == pytest.approx(4.0)
    assert {op["op"] for op in summary["top_ops"]} == {"convolution", "ynn_fusion"}
    with pytest.raises(ValueError, match="no device kernels"):
        summarize_profile(types.SimpleNamespace(planes=[_plane("/host:CPU", [])]), steps=1, wall_s=1.0)
