"""The project's command lines, installed as console scripts and run in a checkout as ``python -m experiments.X``.

=========================  ==========================  =====================================================
installed command          in a checkout               what it does
=========================  ==========================  =====================================================
``segmime-acdc``           ``experiments.acdc``        the ACDC grid of the paper (Table 1 left, Figures 2-4)
``segmime-promise12``      ``experiments.promise12``   the PROMISE12 grid (Table 1 right)
``segmime-gradients``      ``experiments.gradients``   the gradient study of §2.2 (Figure 1)
``segmime-mime-study``     ``experiments.mime_study``  why the mimes trail Dice in a small demo
``segmime-benchmark``      ``experiments.benchmark``   accelerator benchmark of the train step
``segmime-device-check``   ``experiments.device_check`` the prepared GPU check
=========================  ==========================  =====================================================

Each module has ``main(argv, prog)``; the configs are frozen dataclasses (:mod:`segmime_jax.cli`).
"""
