"""Evaluation over the whole eval split exactly once, reduced over data-parallel shards only.

Each data-parallel shard counts its samples once (tensor-parallel copies and non-last pipeline
stages contribute zero), so loss and accuracy are sums over samples divided by the sample count,
not means of per-rank means. The loop reads nothing back to the host per batch (masked sums, the
confusion matrix by index_add, batches and masks copied from pinned memory); the few misclassified
samples shown in TensorBoard are picked from one transfer after the last batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vit_train.distributed.process_group import all_reduce_sum, several_ranks
from vit_train.sampling import eval_shards
from vit_train.step import criterion, gather_batch, to_device

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
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, [true, predicted, wrong] on the device)
    for idx, mask in eval_shards(len(tr.eval_y), per_rank, lay.dp_rank, lay.dp_size):
        x, y = gather_batch(tr.eval_x, tr.eval_y, idx, dev)
        m = to_device(mask, dev)
        logits = _logits(tr, x, y)
        tr.faults.in_eval(tr.state.step)
        if logits is None:
            continue
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        pred = logits.argmax(-1)
        loss_sum += (losses * m).sum()
        correct += ((pred == y) & m).sum()
        count += m.sum()
        confusion.view(-1).index_add_(0, y * num_classes + pred, m.double())  # padding adds 0
        if lay.counts_metrics:
            seen.append((idx, torch.stack((y, pred, (m & (pred != y)).long()))))
    w = 1.0 if lay.counts_metrics else 0.0
    flat = [float(loss_sum) * w, float(correct) * w, float(count) * w] + (confusion.flatten() * w).tolist()
    total = all_reduce_sum(flat, dev)
    n = max(total[2], 1.0)
    confusion_all = torch.tensor(total[3:]).reshape(num_classes, num_classes)
    tr.model.train()
    metrics = {"loss": total[0] / n, "accuracy": total[1] / n, "samples": total[2]}
    return metrics, _figures(tr, confusion_all, _gather(_first_wrong(seen)))


def _first_wrong(seen: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[int, int, int]]:
    """(sample index, true, predicted) of this rank's first MAX_SHOWN misclassified samples."""
    if not seen:
        return []
    idx = torch.cat([i for i, _ in seen])
    true, pred, bad = torch.cat([t for _, t in seen], dim=1).cpu()  # the one read back
    pick = bad.nonzero().flatten()[:MAX_SHOWN]
    return list(zip(idx[pick].tolist(), true[pick].tolist(), pred[pick].tolist()))


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
