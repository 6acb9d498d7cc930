"""The training loop: build, resume, then train_step / maybe_evaluate / maybe_checkpoint / log.

Read top to bottom in :meth:`Trainer.train`. Parallelism enters only through the plugin factory
and :class:`vit_train.distributed.plugins.Layout`; the model and data code know nothing of ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vit_train import evaluation, graph_step
from vit_train.step import criterion, gather_batch, stage_on_device
from vit_train.components.checkpoint import CheckpointManager
from vit_train.config import RunConfig
from vit_train.determinism import use_deterministic_algorithms
from vit_train.distributed.process_group import DistEnv, all_reduce_sum, any_rank, barrier, broadcast_module
from vit_train.components.export import export_hf_model
from vit_train.components.faults import Faults
from vit_train.components.fsutil import atomic_write_text, make_private_dir
from vit_train.model_shapes import PRESETS
from vit_train.patches.one_rank_ddp import without_ddp
from vit_train.distributed.plugins import build_booster, build_optimizer, build_plugin, layout_of, needs_autocast
from vit_train.run_state import LoopState, RunOutcome
from vit_train.sampling import TrainOrder
from vit_train.components.tracking import Tracker
from vit_train.versions import library_versions

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv, stop_requested: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self.env = env
        self.stop_requested = stop_requested
        self.run_dir = Path(cfg.output_dir)
        self.device = env.device
        self.compile_model = cfg.model.compile  # see BENCHMARKS.md: +30% images/s on one H100
        self.setup_seconds: dict[str, float] = {}
        cfg.check_world(env.world_size, env.device.type)
        use_deterministic_algorithms(cfg.model.deterministic)  # before cuBLAS's first handle

    # ------------------------------------------------------------------ setup
    def setup(self, data: Any = None) -> None:
        """Build data, model, plugin and optimizer, boost them and resume. ``data`` (a
        :class:`vit_train.prepared.PreparedData`) skips :func:`vit_train.data.prepare`; the benchmark
        passes synthetic splits that way."""
        from vit_train.model import build_image_processor, build_model

        cfg, env = self.cfg, self.env
        lap = _Lap(self.setup_seconds)
        if env.is_main:
            make_private_dir(self.run_dir)
        barrier()
        processor = build_image_processor(cfg.model)
        self.image_mean, self.image_std = list(processor.image_mean), list(processor.image_std)
        if data is None:
            from vit_train.data import prepare

            data = prepare(cfg.data, processor)
        self.data = data
        self.class_names = list(self.data.class_names)
        lap("data")
        torch.manual_seed(cfg.seed)  # same head init on every rank and every layout
        model = build_model(cfg.model, self.class_names, self.device)
        if cfg.model.name in PRESETS:
            # Random weights made on each rank's GPU (start-up): torch's CUDA sampling depends on the
            # GPU's SM count, so ranks on different GPU models would draw different values, and not
            # every plugin broadcasts. All ranks take rank 0's (the one-process run's on that GPU).
            broadcast_module(model)
        self.model_config = model.config
        if self._use_fast_forwards():
            from vit_train.kernels.fast_vit import apply_fast_forwards

            apply_fast_forwards(model, cls_only_last_layer=cfg.model.cls_only_last_layer and cfg.parallel.pp_size == 1,
                                patch_embedding=cfg.parallel.plugin != "gemini", fused_mlp=self.compile_model and cfg.model.fused_mlp)
        lap("model")
        self.plugin = build_plugin(cfg, env.on_cuda)
        self.booster = build_booster(cfg, self.plugin, env.on_cuda)
        self.lr = cfg.effective_lr(env.world_size)
        optimizer = build_optimizer(cfg, model, self.lr, env.on_cuda)
        lap("plugin")

        train_x, train_y = self.data.train.tensors()
        self.train_x, self.train_y = stage_on_device(train_x, train_y, self.device)
        self.eval_x, self.eval_y = self.data.eval.tensors()
        lap("stage_data")
        self.order = TrainOrder(len(self.train_y), cfg.optim.batch_size, cfg.seed)
        if self.order.steps_per_epoch < 1:
            raise ValueError(
                f"optim.batch_size={cfg.optim.batch_size} is larger than the {len(self.train_y)} training samples; "
                "use a smaller batch size"
            )
        self.total_steps = self.order.steps_per_epoch * cfg.optim.epochs
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(cfg.optim.warmup_ratio * self.total_steps), self.total_steps
        )
        # A graphed step averages its gradients itself (one captured all-reduce): no DDP around the model.
        with without_ddp() if self._graph_requested() else contextlib.nullcontext():
            self.model, self.optimizer, _, _, self.scheduler = self.booster.boost(model, optimizer, lr_scheduler=scheduler)
        self.layout = layout_of(cfg, self.plugin)
        lap("boost")
        if self.compile_model:
            self._compile()
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if needs_autocast(cfg) else contextlib.nullcontext()
        )
        self.faults = Faults(self.run_dir, env.rank)
        self.ckpt = CheckpointManager(self.run_dir, cfg.checkpoint.keep_last, env.rank, env.world_size, self.faults)
        self.state = LoopState()
        self._resume()
        self._interval_loss = torch.zeros((), dtype=torch.float64, device=self.device)  # a graph adds into it
        # The step as one CUDA graph (model.cuda_graph), built after the resume.
        self.graph = graph_step.GraphStep(self, seam=self._graph_seam()) if self._graph_requested() else None
        self.tracker = Tracker(
            self.run_dir, env.is_main, cfg.logging.tensorboard, self.state.step, self.total_steps
        )
        if env.is_main:
            self._write_resolved_config()
        lap("resume")
        log.info("setup took %s", ", ".join(f"{k} {v:.2f}s" for k, v in self.setup_seconds.items()))
        if self.lr != cfg.optim.lr:
            self.tracker.info(
                f"optim.lr_scaling={cfg.optim.lr_scaling}: lr {cfg.optim.lr:g} -> {self.lr:g} for data-parallel size {self.layout.dp_size}"
            )

    def _graph_requested(self) -> bool:
        return self.cfg.model.cuda_graph

    def _graph_seam(self) -> graph_step.Seam | None:
        """The graph's CUDA calls (None: the real ones); the CPU tests' trainer returns a fake."""
        return None

    def _use_fast_forwards(self) -> bool:
        """Tensor parallelism replaces Q/K/V with sharded layers whose forward carries the
        communication: it keeps transformers' forwards. (Gemini gets all but the patch embedding.)"""
        return self.cfg.model.fast_forwards and self.cfg.parallel.tp_size == 1

    def _compile(self) -> None:
        """torch.compile the model in place (``nn.Module.compile``: parameter names and therefore
        checkpoints stay as they are). The first step pays the compilation (tens of seconds,
        less with a warm inductor cache); evaluation runs eager so it triggers no second compile."""
        p = self.cfg.parallel
        if p.plugin == "gemini" or p.pp_size > 1:
            raise ValueError(
                f"model compile with parallel.plugin={p.plugin}, pp_size={p.pp_size}: Gemini's parameter hooks and "
                "the pipeline schedule do not trace; compile works with torch_ddp, low_level_zero and "
                "hybrid_parallel without pipeline"
            )
        self.model.unwrap().compile()

    def _identity(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model.name,
            "class_names": self.class_names,
            "num_hidden_layers": self.model_config.num_hidden_layers,
            "hidden_size": self.model_config.hidden_size,
        }

    def _resume(self) -> None:
        self._saved_step: int | None = None
        path = self.ckpt.latest()
        if path is None:
            return
        import transformers

        expect = {**self._identity(), "transformers_major": transformers.__version__.split(".")[0]}
        saved = self.ckpt.load(path, self.booster, self.model, self.optimizer, expect)
        self.scheduler.load_state_dict(saved["scheduler"])
        loop = saved["loop"]
        self.state = LoopState(**{**loop, "restarts": loop.get("restarts", 0) + 1})
        self._saved_step = self.state.step
        log.info("resumed from %s at step %d (epoch %d, step %d in epoch)", path, self.state.step,
                 self.state.epoch, self.state.step_in_epoch)

    def _write_resolved_config(self) -> None:
        resolved = {
            **self.cfg.to_dict(),
            "resolved": {
                "world_size": self.env.world_size,
                "dp_size": self.layout.dp_size,
                "effective_lr": self.lr,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.order.steps_per_epoch,
                "class_names": self.class_names,
                "versions": library_versions(),
            },
        }
        atomic_write_text(self.run_dir / "config.json", json.dumps(resolved, indent=1))

    # ------------------------------------------------------------------ the loop
    def train(self) -> RunOutcome:
        st = self.state
        self._reset_interval()
        while st.step < self.total_steps:
            perm = self.order.epoch_permutation(st.epoch)
            while st.step_in_epoch < self.order.steps_per_epoch and st.step < self.total_steps:
                _, self._grad_norm = self.train_step(perm, st.step_in_epoch)
                self._interval_steps += 1
                st.step += 1
                st.step_in_epoch += 1
                self.faults.after_step(st.step, self.stop_requested)
                epoch_done = st.step_in_epoch == self.order.steps_per_epoch
                if st.step % self.cfg.logging.log_every_n_steps == 0 or epoch_done or st.step == self.total_steps:
                    self.log()
                if epoch_done:
                    st.last_epoch_avg_loss = st.epoch_loss_sum / max(st.epoch_loss_steps, 1)
                    st.epoch, st.step_in_epoch, st.epoch_loss_sum, st.epoch_loss_steps = st.epoch + 1, 0, 0.0, 0
                self.maybe_evaluate(epoch_done)
                self.maybe_checkpoint()
                if self._should_stop():
                    self.save_checkpoint()
                    self.tracker.write_progress({"state": "preempted", "step": st.step, "epoch": self._epoch_f()})
                    self.tracker.close()
                    return RunOutcome("preempted", st.step, {})
                if epoch_done:
                    break
        return self.finish()

    def _reset_interval(self) -> None:
        self._interval_loss.zero_()
        self._interval_steps, self._interval_t0, self._grad_norm = 0, time.perf_counter(), None

    def train_step(self, perm: torch.Tensor, step_in_epoch: int) -> tuple[torch.Tensor | None, Any]:
        idx = self.order.batch_indices(perm, step_in_epoch, self.layout.dp_rank, self.layout.dp_size)
        # Fingerprint of the step's *global* batch (same on every rank and layout): lets tests and
        # users check that a resumed run saw the same data order.
        self._batch_crc = zlib.crc32(self.order.batch_indices(perm, step_in_epoch, 0, 1).numpy().tobytes())
        self.model.train()
        if self.graph is not None:  # it also adds the loss into _interval_loss, inside the graph
            loss, grad_norm = self.graph.step(idx)
            self.scheduler.step()
            return loss, grad_norm
        x, y = gather_batch(self.train_x, self.train_y, idx, self.device)
        if self.layout.uses_pipeline:
            out = self.booster.execute_pipeline(
                iter([{"pixel_values": x, "labels": y}]), self.model, criterion, self.optimizer, return_loss=True
            )
            loss = out["loss"] if self.layout.is_last_stage else None
        else:
            with self.autocast:
                logits = self.model(pixel_values=x).logits
            loss = F.cross_entropy(logits.float(), y)
            self.booster.backward(loss, self.optimizer)
        grad_norm = self._clip_and_norm()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        if loss is not None:  # counted here, read on the host only by log()
            self._interval_loss += loss.detach().double()
        return loss, grad_norm

    def _clip_and_norm(self) -> Any:
        if self.cfg.parallel.plugin == "torch_ddp":
            max_norm = self.cfg.optim.max_grad_norm
            return self.optimizer.clip_grad_by_norm(max_norm if max_norm > 0 else float("inf"))
        return None  # the ZeRO/Gemini/hybrid optimizers clip inside step(); read after it in log()

    def log(self) -> None:
        """Reduce the losses since the last record (collective) and write one record; also called
        before every checkpoint so a resumed run's epoch averages match an uninterrupted one."""
        st, steps = self.state, self._interval_steps
        if steps == 0:
            return
        grad_norm = self._grad_norm
        if grad_norm is None and hasattr(self.optimizer, "get_grad_norm"):
            grad_norm = self.optimizer.get_grad_norm()
        seconds = time.perf_counter() - self._interval_t0
        has_loss = 1.0 if self.layout.counts_metrics else 0.0
        loss_sum, contributors = all_reduce_sum([float(self._interval_loss) * has_loss, has_loss], self.device)
        mean_loss = loss_sum / max(contributors, 1.0) / steps
        st.epoch_loss_sum += mean_loss * steps
        st.epoch_loss_steps += steps
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            import psutil

            mem = psutil.Process().memory_info().rss / 2**30
        scalars = {
            "loss": mean_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "img_per_s": steps * self.cfg.optim.batch_size / max(seconds, 1e-9),
            "mem_gib": mem,
            "batch_crc": self._batch_crc,
        }
        self._reset_interval()
        self.tracker.log_train(st.step, self._epoch_f(), scalars)

    def _epoch_f(self) -> float:
        return self.state.epoch + self.state.step_in_epoch / self.order.steps_per_epoch

    def maybe_evaluate(self, epoch_done: bool) -> None:
        last = self.state.step == self.total_steps
        if not (last or (epoch_done and self.state.epoch % self.cfg.logging.eval_every_n_epochs == 0)):
            return
        metrics, figures = evaluation.evaluate(self)
        self.state.last_eval = metrics
        self.tracker.log_eval(self.state.step, self._epoch_f(), metrics, figures)

    def maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint.every_n_steps
        if every and self.state.step % every == 0 and self.state.step < self.total_steps:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        import dataclasses

        self.log()

        state = {
            "loop": dataclasses.asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "identity": self._identity(),
            "config": self.cfg.to_dict(),
            "versions": library_versions(),
            "layout": {"plugin": self.cfg.parallel.plugin, "tp": self.cfg.parallel.tp_size, "pp": self.cfg.parallel.pp_size},
        }
        path = self.ckpt.save(self.state.step, self.booster, self.model, self.optimizer, state)
        self._saved_step = self.state.step
        return path

    def _should_stop(self) -> bool:
        local = self.stop_requested() or self.faults.stop_pending
        if self.env.world_size == 1:
            return local  # nothing to agree on: skip the collective and its per-step host sync
        return any_rank(local, self.device)

    def finish(self) -> RunOutcome:
        st = self.state
        if not st.last_eval:
            self.maybe_evaluate(epoch_done=True)
        # Known without re-reading (and re-hashing) the checkpoint folder: saved or resumed at this step?
        if self._saved_step != st.step:
            self.save_checkpoint()
        if self.cfg.checkpoint.export_hf:
            export_hf_model(self, self.run_dir / "final_model")
        avg = st.last_epoch_avg_loss if not math.isnan(st.last_epoch_avg_loss) else st.epoch_loss_sum / max(st.epoch_loss_steps, 1)
        result = {
            "status": "completed",
            "steps": st.step,
            "epochs": st.step / self.order.steps_per_epoch,
            "avg_train_loss": avg,
            "eval_loss": st.last_eval.get("loss"),
            "eval_accuracy": st.last_eval.get("accuracy"),
            "eval_samples": st.last_eval.get("samples"),
            "restarts": st.restarts,
            "world_size": self.env.world_size,
            "effective_lr": self.lr,
            "deterministic_kernels": torch.are_deterministic_algorithms_enabled(),
        }
        if self.env.is_main:
            atomic_write_text(self.run_dir / "result.json", json.dumps(result, indent=1))
            # What the grid varies and what identifies a run (logging.hparams), not every field.
            self.tracker.log_hparams(self.cfg.hparam_values(), {"accuracy": result["eval_accuracy"] or 0.0,
                                                                "eval_loss": result["eval_loss"] or 0.0, "avg_train_loss": avg})
            self.tracker.write_progress({"state": "completed", "step": st.step, "epoch": self._epoch_f(),
                                         "loss": avg, "accuracy": result["eval_accuracy"]})
        self.tracker.close()
        barrier()
        return RunOutcome("completed", st.step, result)


class _Lap:
    """Records the seconds since the previous call under a name (the setup breakdown)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = now - self.t
        self.t = now
