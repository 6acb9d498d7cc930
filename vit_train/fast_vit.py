"""Faster forwards for two HF ViT modules: same parameters, same names, same maths.

transformers' ViT computes self-attention with three separate Q/K/V products, makes each head view
contiguous before SDPA (three copies forward, three more backward), and embeds patches with a
strided convolution that cuDNN serves with layout conversions (NCHW to NHWC and back). On an H100
those copies and conversions are a measurable share of a step once the matrix products run near
the hardware's rate (see BENCHMARKS.md). The rewrites here:

- self-attention: one product with the concatenated Q/K/V weights (the concatenation is 3 x d x d
  values per layer, negligible next to the activations), heads taken as strided views of its
  output and passed to SDPA as they are;
- patch embedding: the image cut into non-overlapping patches by a reshape and one matrix product
  with the convolution's weight viewed as (hidden, channels * patch * patch). With stride equal to
  the kernel size and no padding, this is exactly the convolution.

Both are bound to module instances (``module.forward``), so ``state_dict`` keys, checkpoints and
HF exports are unchanged, and fall back to the original forward for what they do not cover
(attention maps requested, head masks, interpolated position embeddings). Tensor-parallel layouts
replace Q/K/V with sharded layers whose forward carries the communication: the caller must not
apply this to them (:func:`apply_fast_forwards` is for unsharded models).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.vit.modeling_vit import ViTPatchEmbeddings, ViTSelfAttention


def _self_attention_forward(
    self: ViTSelfAttention, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, ...]:
    if output_attentions or head_mask is not None or self.config._attn_implementation != "sdpa":
        return type(self).forward(self, hidden_states, head_mask, output_attentions)
    b, s, _ = hidden_states.shape
    h, d = self.num_attention_heads, self.attention_head_size
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
    bias = None
    if self.query.bias is not None:
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    # (b, s, 3, h, d) -> three (b, h, s, d) views; SDPA's fused kernels take these strides as they are.
    q, k, v = F.linear(hidden_states, weight, bias).view(b, s, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    context = F.scaled_dot_product_attention(
        q, k, v, dropout_p=self.dropout_prob if self.training else 0.0, scale=self.scaling
    )
    return (context.transpose(1, 2).reshape(b, s, h * d),)


def _patch_embeddings_forward(
    self: ViTPatchEmbeddings, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    conv = self.projection
    b, c, height, width = pixel_values.shape
    if (interpolate_pos_encoding or c != self.num_channels
            or (height, width) != tuple(self.image_size)):  # let the original raise or interpolate
        return type(self).forward(self, pixel_values, interpolate_pos_encoding)
    ph, pw = conv.kernel_size
    patches = (pixel_values.reshape(b, c, height // ph, ph, width // pw, pw)
               .permute(0, 2, 4, 1, 3, 5)
               .reshape(b, (height // ph) * (width // pw), c * ph * pw))
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def _patchable(module: ViTPatchEmbeddings) -> bool:
    conv = module.projection
    return (isinstance(conv, nn.Conv2d) and conv.stride == conv.kernel_size and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1)


def apply_fast_forwards(model: nn.Module) -> int:
    """Bind the faster forwards to every ViT self-attention and patch-embedding module of ``model``
    (an unsharded model); returns how many modules were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, ViTSelfAttention) and isinstance(module.query, nn.Linear):
            module.forward = types.MethodType(_self_attention_forward, module)
            changed += 1
        elif isinstance(module, ViTPatchEmbeddings) and _patchable(module):
            module.forward = types.MethodType(_patch_embeddings_forward, module)
            changed += 1
    return changed
