"""Every adaptation of a third-party library (ColossalAI 0.5.0 above all) lives in this folder.

Revisit each one at every ColossalAI, torch or transformers upgrade: the speed fixes reproduce parts
of the methods they replace and refuse (with a warning) any ColossalAI other than the version they
target (:mod:`~vit_train.patches.patching`). ``VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1`` turns every
speed fix off (the benchmark's same-run A/B).

| module | what it fixes | targets | proved by |
|---|---|---|---|
| ``cpu_compat`` | CPU (gloo) training: LowLevelZero sanity assert, CPU accelerator streams/RNG/device, ``is_hccl_available`` / ``Backend.HCCL`` missing in torch, a pure-torch HybridAdam kernel | colossalai 0.5.0; torch 2.5.1 and 2.13 | ``tests/test_cpu_compat.py``, ``tests/test_cpu_compat_hccl.py`` |
| ``cpu_adam_bf16`` | HybridAdam's CPU path drops ``div_scale`` (Gemini's clipping and loss scale) for bf16 gradients: Gemini + optimizer offload + bf16 trained unclipped (a correctness fix, always on) | colossalai 0.5.0 | ``tests/test_cpu_adam_bf16.py`` |
| ``zero_buckets`` | ZeRO gradient buckets end at every parameter-group change (~150 rounds per step instead of ~8) | colossalai 0.5.0 | ``tests/test_zero_buckets.py`` |
| ``amp_loops`` | mixed-precision optimizer: one kernel per parameter in three loops, and a host read of the grad norm every step | colossalai 0.5.0 | ``tests/test_amp_loops.py`` |
| ``one_rank_ddp`` | no torch DDP (and no NCCL set-up) around a model whose data-parallel group is one rank; none for any group inside ``without_ddp`` (``model.cuda_graph`` averages gradients itself), rank 0's weights broadcast as DDP would | colossalai 0.5.0 | ``tests/test_one_rank_ddp.py`` |
| ``tp_dropout`` | tensor-parallel dropouts of rate 0 swap the CUDA RNG state every forward, which CUDA-graph capture forbids (``model.cuda_graph`` only) | colossalai 0.5.0 | ``tests/test_graph_step.py`` |
| ``lazy_compile`` | ColossalAI's and bitsandbytes' import-time ``torch.compile`` decorations set up inductor at import: compile on first call | colossalai 0.5.0, bitsandbytes 0.50, torch >= 2.5 | ``tests/test_startup_imports.py`` |
| ``startup`` | start-up import trims: ``USE_FLAX=0``, transformers treats scikit-learn/scipy as absent | transformers 4.51.3 | ``tests/test_startup_imports.py`` |
| ``import_hooks`` | the one meta-path hook ``lazy_compile`` and ``startup`` share (not a patch itself) | - | ``tests/test_startup_imports.py`` |
| ``patching`` | applies a speed fix once per process, only to the version it was written for (not a patch itself) | - | the tests above |

Gemini's per-run options (no asynchronous reduction stream on one rank) are set where the plugin is
built, :mod:`vit_train.distributed.plugins`, not patched.
"""
