"""The whole training step as one CUDA graph (``model.cuda_graph``): captured once, then replayed.

An eager ViT-B step is about a thousand kernel launches issued from Python, plus the plugin's Python
around them; at small batches the host, not the GPU, sets the pace. A replayed graph issues all of
them with one call. What the graph holds is :func:`step_body`, the calls of the Trainer's own step:

- the batch, gathered on the GPU from the staged training split by a static index tensor; before
  each replay the step's indices are copied into it from pinned memory (asynchronously);
- forward (bf16 autocast where the plugin uses it, without autocast's weight-cast cache), the
  cross-entropy, and the backward through the booster;
- with several data-parallel ranks, the gradients' average: one NCCL all-reduce of a flat buffer
  (:mod:`vit_train.distributed.grad_sync`; the model is boosted without DDP, whose reducer is host
  machinery);
- clipping: torch_ddp's ``clip_grad_norm_`` (foreach, the norm and the clip factor stay on the GPU);
  hybrid_parallel's mixed-precision optimizer clips inside its step, on the GPU with
  :mod:`vit_train.patches.amp_loops` (its tensor-parallel norm all-reduce is an NCCL collective,
  which graphs capture, as are the TP layers' all-reduces);
- torch's fused AdamW with ``capturable=True``: the step counters are device tensors that the graph
  increments; the learning rate is read from one device tensor per parameter group;
- the loss, copied into a static buffer and added into the Trainer's interval accumulator, which the
  host reads only when the Trainer logs.

Outside the graph: the scheduler computes each step's rate on the host as in an eager run and the
rate tensors are filled from it before each replay; the parameter groups hold Python-float rates at
all other times (they point at the tensors only while the capture records), so optimizer and
scheduler state, and with them checkpoints, are those of an eager run: a run resumes with or without
the graph. Gradients are set to None before the capture, so the captured backward assigns them
(torch's whole-network capture pattern); nothing zeroes them between replays. The first
:data:`WARMUP_STEPS` steps run eagerly on a side stream (torch's rule: lazy initialisation, optimizer
state, cuBLAS workspaces and compilation happen before the capture), the next one is captured, and
every step from then on, that one included, is a replay. A resumed run warms up and captures again.

:class:`CapturedStep` is that bookkeeping for any step function over static buffers (the benchmark's
plain-PyTorch graph uses it too); the CUDA calls sit behind :class:`CudaSeam`, so tests run the same
bookkeeping and :func:`step_body` eagerly on a CPU with a fake seam. Which layouts qualify is
:mod:`vit_train.graph_rules`; :func:`check_graphable` refuses, at set-up, what only the built
objects show.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

from vit_train.components.checkpoint import steps_on_param_device
from vit_train.distributed import grad_sync
from vit_train.distributed.plugins import dp_group_of, needs_autocast
from vit_train.patches.tp_dropout import skip_rng_forks

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
"""Eager steps before the capture (torch's examples use 3 without DDP); at least 1, since the first
step creates the optimizer state, which a capture must not allocate."""


class Seam(Protocol):
    """The CUDA calls of :class:`CapturedStep`; :class:`CudaSeam` makes them, tests fake them."""

    def stage_indices(self, dst: torch.Tensor, idx: torch.Tensor) -> None: ...
    def run_eager(self, fn: Callable[[], None]) -> None: ...
    def capture(self, fn: Callable[[], None], reset_grads: Callable[[], None]) -> None: ...
    def replay(self) -> None: ...


class CudaSeam:
    """Warm-up on a side stream, capture with ``torch.cuda.graph``, replay."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side_stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def stage_indices(self, dst: torch.Tensor, idx: torch.Tensor) -> None:
        # A fresh pinned block per step: the caching host allocator keeps it until its copy has run,
        # so the host may run ahead to the next step without overwriting indices still in flight.
        dst.copy_(idx.pin_memory(), non_blocking=True)

    def run_eager(self, fn: Callable[[], None]) -> None:
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            fn()
        current.wait_stream(self.side_stream)

    def capture(self, fn: Callable[[], None], reset_grads: Callable[[], None]) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (torch's NCCL watchdog polls its events) may keep calling CUDA
        # while this thread captures; in the default "global" mode such a call invalidates the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
        self.graph = graph

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()


class CapturedStep:
    """One step function over static buffers: eager for ``warmup_steps`` calls, captured on the next,
    replayed from then on (that call included: a capture records the work but does not run it).

    ``body`` reads its batch through ``static_idx`` and writes its results into buffers it owns;
    ``reset_grads`` sets the gradients to None; ``param_groups`` are the optimizer's, whose ``lr``
    the captured optimizer step reads from :attr:`lr` (filled from the groups before each replay).
    """

    def __init__(self, body: Callable[[], None], reset_grads: Callable[[], None], param_groups: list[dict[str, Any]],
                 static_idx: torch.Tensor, seam: Seam, warmup_steps: int = WARMUP_STEPS) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps}: use at least 1 (the first step creates the optimizer state)")
        self.body, self.reset_grads, self.param_groups = body, reset_grads, param_groups
        self.static_idx, self.seam, self.warmup_steps = static_idx, seam, warmup_steps
        self.calls = 0
        self.captured = False
        # fp32 like the fused AdamW kernel's own rate (it casts a Python-float lr to fp32 as well).
        self.lr = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=static_idx.device) for g in param_groups]

    def __call__(self, idx: torch.Tensor) -> None:
        if idx.shape != self.static_idx.shape:
            raise ValueError(f"step indices of shape {tuple(idx.shape)}; the graph was built for {tuple(self.static_idx.shape)}")
        self.seam.stage_indices(self.static_idx, idx)
        if self.calls < self.warmup_steps:
            self.reset_grads()
            self.seam.run_eager(self.body)
        else:
            if not self.captured:
                self.reset_grads()  # the captured backward then assigns .grad: no accumulation across replays
                with self.lr_from_tensors():
                    self.seam.capture(self.body, self.reset_grads)
                self.captured = True
            for t, group in zip(self.lr, self.param_groups):
                t.fill_(group["lr"])  # an asynchronous fill, ordered before the replay on the same stream
            self.seam.replay()
        self.calls += 1

    @contextlib.contextmanager
    def lr_from_tensors(self) -> Iterator[None]:
        """The groups' ``lr`` are the rate tensors inside (what the capture records), floats again after."""
        floats = [g["lr"] for g in self.param_groups]
        for g, t in zip(self.param_groups, self.lr):
            g["lr"] = t
        try:
            yield
        finally:
            for g, f in zip(self.param_groups, floats):
                g["lr"] = f


@dataclass(frozen=True)
class StaticBuffers:
    """What the graph reads and writes outside itself: same tensors, same addresses, every replay."""

    idx: torch.Tensor
    """The step's sample indices on this rank (int64, device)."""
    loss: torch.Tensor
    """The step's loss (fp32, 0-dim)."""
    grad_norm: torch.Tensor
    """The step's total gradient norm before clipping (fp64, 0-dim; NaN when the plugin reports none)."""
    loss_sum: torch.Tensor
    """The Trainer's interval loss accumulator (fp64, 0-dim), zeroed in place by the Trainer."""


def step_body(tr: Any, buf: StaticBuffers, autocast: Any, grad_sync: Callable[[], None] | None) -> None:
    """One training step of Trainer ``tr`` on the samples ``buf.idx``: what the graph captures and
    what the warm-up steps run eagerly. Nothing here reads the GPU back to the host, and nothing in
    the Python state it touches changes from one step to the next. ``grad_sync`` averages the
    gradients over the data-parallel ranks (None with one)."""
    x = torch.index_select(tr.train_x, 0, buf.idx)
    y = torch.index_select(tr.train_y, 0, buf.idx)
    with autocast:
        logits = tr.model(pixel_values=x).logits
    loss = F.cross_entropy(logits.float(), y)
    tr.booster.backward(loss, tr.optimizer)
    if grad_sync is not None:
        grad_sync()
    grad_norm = tr._clip_and_norm()
    tr.optimizer.step()
    if grad_norm is None:  # hybrid_parallel: its optimizer clipped inside step(), norm kept on the GPU
        grad_norm = tr.optimizer.get_grad_norm()
    buf.loss.copy_(loss.detach())
    buf.loss_sum.add_(loss.detach().double())
    if isinstance(grad_norm, torch.Tensor):
        buf.grad_norm.copy_(grad_norm)


class GraphStep:
    """The Trainer's step as a :class:`CapturedStep`; ``seam`` is the CUDA one unless a test fakes it."""

    def __init__(self, tr: Any, seam: Seam | None = None, warmup_steps: int = WARMUP_STEPS) -> None:
        check_graphable(tr)
        dev, cfg = tr.device, tr.cfg
        per_rank = cfg.optim.batch_size // tr.layout.dp_size
        self.buffers = StaticBuffers(
            idx=torch.zeros(per_rank, dtype=torch.int64, device=dev),
            loss=torch.zeros((), dtype=torch.float32, device=dev),
            grad_norm=torch.full((), float("nan"), dtype=torch.float64, device=dev),
            loss_sum=tr._interval_loss,
        )
        # torch_ddp always returns a norm (clip_grad_norm_); hybrid_parallel computes one when clipping.
        self.reports_norm = cfg.parallel.plugin == "torch_ddp" or cfg.optim.max_grad_norm > 0
        inner = tr.optimizer.optim
        if dev.type == "cuda":
            make_capturable(inner)
        # No weight-cast cache: the casts are part of each replay (the same casts an eager step makes).
        autocast = (torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False) if needs_autocast(cfg)
                    else contextlib.nullcontext())
        # Several data-parallel ranks: the gradients are averaged inside the step (no DDP: the Trainer
        # boosted under one_rank_ddp.without_ddp).
        self.grad_sync = grad_sync.build(tr.model.unwrap().named_parameters(), dp_group_of(cfg, tr.plugin),
                                         tr.layout.dp_size)
        if self.grad_sync is not None:
            log.info("model.cuda_graph: gradients averaged over %d ranks inside the graph (%s)", self.grad_sync.size,
                     ", ".join(f"{len(v)} {str(k).replace('torch.', '')} tensors" for k, v in self.grad_sync.buckets.items()))
        self.step_fn = CapturedStep(functools.partial(step_body, tr, self.buffers, autocast, self.grad_sync),
                                    tr.optimizer.zero_grad, inner.param_groups, self.buffers.idx, seam or CudaSeam(dev),
                                    warmup_steps)

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one step; returns the static loss and norm buffers (valid until the next step)."""
        self.step_fn(idx)
        return self.buffers.loss, (self.buffers.grad_norm if self.reports_norm else None)


def make_capturable(optim: torch.optim.Optimizer) -> None:
    """Ready torch's fused AdamW for capture, after any resume: capturable groups (a checkpoint's saved
    groups replace the optimizer's whole on load) and step counters on the parameters' device (the
    checkpoint loader puts them there already; a CPU counter's increment would never be captured)."""
    if not isinstance(optim, torch.optim.AdamW) or not all(g.get("fused") for g in optim.param_groups):
        raise RuntimeError(f"model.cuda_graph needs torch's fused AdamW, got {type(optim).__name__} "
                           f"(fused={[g.get('fused') for g in optim.param_groups]}); use optim.optimizer: adamw")
    for group in optim.param_groups:
        group["capturable"] = True
    steps_on_param_device(optim)


def check_graphable(tr: Any) -> None:
    """Refuse what the config cannot show (RunConfig already applied vit_train.graph_rules), and give
    tensor-parallel dropouts of rate 0 a forward without their RNG-state swap (patches.tp_dropout)."""
    from torch.nn.parallel import DistributedDataParallel

    off = "or set model.cuda_graph: false"
    if tr.train_x.device.type != tr.device.type:
        gib = tr.train_x.numel() * tr.train_x.element_size() / 2**30
        raise RuntimeError(f"model.cuda_graph: the training split ({gib:.1f} GiB) stays in host memory (over a tenth "
                           f"of the GPU's), and a graph gathers its batch on the GPU; use data.max_train_samples {off}")
    if isinstance(getattr(tr.model, "module", None), DistributedDataParallel):
        raise RuntimeError("model.cuda_graph: the model is wrapped in torch DDP, whose gradient hooks cannot be captured "
                           "(VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1 keeps ColossalAI's DDP around a one-rank group); unset "
                           f"VIT_TRAIN_COLOSSALAI_AS_SHIPPED {off}")
    if tr.cfg.parallel.plugin == "hybrid_parallel":
        from colossalai.amp.naive_amp.mixed_precision_optimizer import MixedPrecisionOptimizer

        from vit_train.patches import amp_loops

        if MixedPrecisionOptimizer.step is not amp_loops._step:
            raise RuntimeError("model.cuda_graph: ColossalAI's mixed-precision optimizer as shipped reads the gradient "
                               "norm on the host every step; vit_train.patches.amp_loops keeps it on the GPU but is not "
                               f"applied (VIT_TRAIN_COLOSSALAI_AS_SHIPPED=1, or a ColossalAI other than 0.5.0) {off}")
    skip_rng_forks(tr.model)  # ColossalAI's TP dropouts swap the CUDA RNG state, which a capture forbids
