"""Evaluation over the whole eval split exactly once, reduced over data-parallel shards only.

Each data-parallel shard counts its samples once (tensor-parallel copies and non-last pipeline
stages contribute zero), so loss and accuracy are sums over samples divided by the sample count,
not means of per-rank means.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vit_train.distributed.process_group import all_reduce_sum, several_ranks
from vit_train.sampling import eval_shards
from vit_train.step import criterion

MAX_SHOWN = 8


@torch.no_grad()
def evaluate(tr: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """Returns metrics {loss, accuracy, samples} and TensorBoard images (may be empty)."""
    lay, dev = tr.layout, tr.device
    num_classes = len(tr.class_names)
    per_rank = tr.cfg.optim.batch_size // lay.dp_size
    tr.model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    count = torch.zeros((), dtype=torch.float64, device=dev)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=dev)
    wrong: list[tuple[int, int, int]] = []  # (sample index, true, predicted), a few for TensorBoard
    for idx, mask in eval_shards(len(tr.eval_y), per_rank, lay.dp_rank, lay.dp_size):
        x = tr.eval_x[idx].to(dev, non_blocking=True)
        y = tr.eval_y[idx].to(dev, non_blocking=True)
        m = mask.to(dev)
        logits = _logits(tr, x, y)
        tr.faults.in_eval(tr.state.step)
        if logits is None:
            continue
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        pred = logits.argmax(-1)
        loss_sum += (losses * m).sum()
        correct += ((pred == y) & m).sum()
        count += m.sum()
        confusion.index_put_((y[m], pred[m]), torch.ones_like(y[m], dtype=torch.float64), accumulate=True)
        if lay.counts_metrics and len(wrong) < MAX_SHOWN:
            bad = (m & (pred != y)).cpu()
            wrong += list(zip(idx[bad].tolist(), y.cpu()[bad].tolist(), pred.cpu()[bad].tolist()))[: MAX_SHOWN - len(wrong)]
    w = 1.0 if lay.counts_metrics else 0.0
    flat = [float(loss_sum) * w, float(correct) * w, float(count) * w] + (confusion.flatten() * w).tolist()
    total = all_reduce_sum(flat, dev)
    n = max(total[2], 1.0)
    confusion_all = torch.tensor(total[3:]).reshape(num_classes, num_classes)
    tr.model.train()
    metrics = {"loss": total[0] / n, "accuracy": total[1] / n, "samples": total[2]}
    return metrics, _figures(tr, confusion_all, _gather(wrong))


def _gather(items: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """All ranks' few misclassified samples (small Python lists; collective)."""
    if not several_ranks():
        return sorted(items)[:MAX_SHOWN]
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(out, items)
    return sorted({t for part in out for t in part})[:MAX_SHOWN]


def _figures(tr: Any, confusion: torch.Tensor, wrong: list[tuple[int, int, int]]) -> dict[str, Any]:
    if not (tr.env.is_main and tr.cfg.logging.tensorboard):
        return {}
    from vit_train.components.figures import confusion_image, misclassified_strip

    figs = {"eval/confusion_matrix": confusion_image(confusion, tr.class_names)}
    if wrong:
        idx = torch.tensor([w[0] for w in wrong])
        figs["eval/misclassified"] = misclassified_strip(
            tr.eval_x[idx], [w[1] for w in wrong], [w[2] for w in wrong], tr.class_names, tr.image_mean, tr.image_std
        )
    return figs


def _logits(tr: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    if tr.layout.uses_pipeline:
        out = tr.booster.execute_pipeline(
            iter([{"pixel_values": x, "labels": y}]), tr.model, criterion, None, return_loss=False, return_outputs=True
        )
        return out["outputs"]["logits"] if tr.layout.is_last_stage else None
    # A compiled model evaluates eager: eval mode and no_grad would otherwise compile a second graph,
    # which costs more than a few evaluation batches gain from it.
    eager = torch.compiler.set_stance("force_eager") if getattr(tr, "compile_model", False) else contextlib.nullcontext()
    with tr.autocast, eager:
        return tr.model(pixel_values=x).logits
