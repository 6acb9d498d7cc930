"""vit_train.kernels.fast_vit: the rewritten ViT forwards compute what transformers' forwards compute.

Real transformers ViT (a small config, fp32, CPU): outputs, losses and every parameter gradient of
a model with the fast forwards bound equal the stock model's; parameter names are unchanged; the
cases the rewrites do not cover go to the original forwards.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vit_train.config import ModelConfig
from vit_train.kernels.fast_vit import apply_fast_forwards
from vit_train.model import build_model


def _pair(cls_only: bool = True, fused_mlp: bool = False, **cfg: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    stock = build_model(ModelConfig(name="tiny", **cfg), ["a", "b", "c"])
    fast = copy.deepcopy(stock)
    # attention (+ MLP) per layer + patch embedding (+ the classifier)
    layers = stock.config.num_hidden_layers
    assert apply_fast_forwards(fast, cls_only, fused_mlp=fused_mlp) == layers * (1 + fused_mlp) + 1 + cls_only
    return stock, fast


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, size, size, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])


@pytest.mark.parametrize("cls_only,fused_mlp", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("train", [True, False])
def test_same_outputs_and_gradients(train: bool, cls_only: bool, fused_mlp: bool) -> None:
    """As the Trainer calls the model: logits out, loss computed outside."""
    stock, fast = _pair(cls_only, fused_mlp)
    x, y = _batch(stock.config.image_size)
    rows = []  # rows the last layer's MLP saw in the fast model
    hook = fast.vit.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[1]))
    for m in (stock, fast):
        m.train(train)
        logits = m(pixel_values=x).logits
        torch.nn.functional.cross_entropy(logits, y).backward()
        m.logits_ = logits.detach()
    hook.remove()
    tokens = (stock.config.image_size // stock.config.patch_size) ** 2 + 1
    assert rows == [1 if cls_only else tokens]  # the [CLS]-only last layer did run (or did not)
    assert torch.allclose(stock.logits_, fast.logits_, atol=1e-5, rtol=0)
    assert [n for n, _ in stock.named_parameters()] == [n for n, _ in fast.named_parameters()]
    assert list(stock.state_dict()) == list(fast.state_dict())
    for (name, a), (_, b) in zip(stock.named_parameters(), fast.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    # the comparison is not vacuous: gradients are non-zero where Q/K/V and the patch embedding sit
    q = fast.vit.encoder.layer[0].attention.attention.query.weight.grad
    assert q.abs().max() > 1e-6 and fast.vit.embeddings.patch_embeddings.projection.weight.grad.abs().max() > 1e-6


def test_labels_and_hidden_states_use_the_full_forward() -> None:
    """Calls the [CLS]-only classifier does not cover get transformers' full forward: the loss
    from ``labels``, and hidden states of full length."""
    stock, fast = _pair()
    x, y = _batch(stock.config.image_size)
    stock.eval(), fast.eval()
    with torch.no_grad():
        a, b = stock(pixel_values=x, labels=y), fast(pixel_values=x, labels=y)
        assert b.loss is not None and torch.allclose(a.loss, b.loss, atol=1e-6)
        hs = fast(pixel_values=x, output_hidden_states=True).hidden_states
        assert hs[-1].shape == stock(pixel_values=x, output_hidden_states=True).hidden_states[-1].shape
        assert hs[-1].shape[1] > 1


def test_uncovered_cases_use_the_stock_forwards() -> None:
    stock, fast = _pair()
    x, _ = _batch(stock.config.image_size)
    stock.eval(), fast.eval()
    with torch.no_grad():
        a = stock(pixel_values=x, output_attentions=True)
        b = fast(pixel_values=x, output_attentions=True)
        assert len(b.attentions) == stock.config.num_hidden_layers
        assert torch.allclose(a.attentions[0], b.attentions[0], atol=1e-6)
        # another resolution: the stock forward interpolates the position embeddings
        big = torch.randn(2, 3, 2 * stock.config.image_size, 2 * stock.config.image_size)
        a = stock(pixel_values=big, interpolate_pos_encoding=True).logits
        b = fast(pixel_values=big, interpolate_pos_encoding=True).logits
        assert torch.allclose(a, b, atol=1e-5)
        with pytest.raises(ValueError, match="doesn't match model"):
            fast(pixel_values=big)
