"""Accelerator diagnostics, optional (the core library never imports this package): timing of compiled train and
inference steps (:mod:`~segmime_jax.bench.suite`, ``python -m experiments.benchmark``), what XLA made of a step
(:mod:`~segmime_jax.bench.program_audit`), profile summaries (:mod:`~segmime_jax.bench.profile`) and the GPU check
(:mod:`~segmime_jax.bench.device_check`, ``python -m experiments.device_check``)."""
