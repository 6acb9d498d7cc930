"""Faster forwards for two HF ViT modules: same parameters, same names, same maths.

transformers' ViT computes self-attention with three separate Q/K/V products, makes each head view
contiguous before SDPA (three copies forward, three more backward), and embeds patches with a
strided convolution that cuDNN serves with layout conversions (NCHW to NHWC and back). On an H100
those copies and conversions are a measurable share of a step once the matrix products run near
the hardware's rate (see BENCHMARKS.md). The rewrites here:

- self-attention: heads taken as strided views of the Q/K/V products and passed to SDPA as they
  are (no copies forward or backward);
- patch embedding: the image cut into non-overlapping patches by a reshape and one matrix product
  with the convolution's weight viewed as (hidden, channels * patch * patch). With stride equal to
  the kernel size and no padding, this is exactly the convolution;
- image classification (optional, ``cls_only_last_layer``): the classifier reads only the [CLS]
  token of the last layer's output, and every operation of a ViT layer after the key/value products
  acts on each token separately (query product, attention for that query, output product,
  LayerNorm, MLP, residuals). So the last layer computes keys and values for all tokens and
  everything else for the [CLS] token only: the same logits, and the same gradients, without the
  work on 196 of 197 rows of the last layer (about 6% of ViT-B/16's forward and backward). The
  model's own ``vit(...)`` and every uncovered call (labels, attention maps, hidden states, head
  masks, interpolation) still run transformers' full forward.

All are bound to module instances (``module.forward``), so ``state_dict`` keys, checkpoints and
HF exports are unchanged, and fall back to the original forward for what they do not cover
(attention maps requested, head masks, interpolated position embeddings). Tensor-parallel layouts
replace Q/K/V with sharded layers whose forward carries the communication: the caller must not
apply this to them (:func:`apply_fast_forwards` is for unsharded models). The attention and
classifier forwards touch parameters only through the modules' own calls, as transformers' forwards
do, so Gemini's parameter hooks see the same operations; the patch embedding reshapes the weight
itself, which the caller leaves out under Gemini (``patch_embedding=False``).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.activations import GELUActivation
from transformers.models.vit.modeling_vit import (
    ViTForImageClassification,
    ViTIntermediate,
    ViTLayer,
    ViTPatchEmbeddings,
    ViTSelfAttention,
)


def _self_attention_forward(
    self: ViTSelfAttention, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, ...]:
    if output_attentions or head_mask is not None or self.config._attn_implementation != "sdpa":
        return type(self).forward(self, hidden_states, head_mask, output_attentions)
    b, s, _ = hidden_states.shape
    h, d = self.num_attention_heads, self.attention_head_size
    # Each (b, s, h*d) product output viewed as (b, h, s, d) without a copy: SDPA (cuDNN on an H100)
    # takes these strides as they are and returns gradients in the same layout, so the backward needs
    # no copies either. (One product with the concatenated Q/K/V weights measured ~1% slower: the
    # three gradients then have to be stacked into one buffer.)
    q, k, v = (lin(hidden_states).view(b, s, h, d).transpose(1, 2) for lin in (self.query, self.key, self.value))
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


def _cls_last_layer(layer: ViTLayer, hidden_states: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for the [CLS] token only, shape (b, 1, hidden): keys and values from all
    tokens, everything else from token 0."""
    sa = layer.attention.attention
    b, s, _ = hidden_states.shape
    h, d = sa.num_attention_heads, sa.attention_head_size
    normed = layer.layernorm_before(hidden_states)
    cls_normed, cls_in = normed[:, :1], hidden_states[:, :1]
    k, v = (lin(normed).view(b, s, h, d).transpose(1, 2) for lin in (sa.key, sa.value))
    q = sa.query(cls_normed).view(b, 1, h, d).transpose(1, 2)
    context = F.scaled_dot_product_attention(
        q, k, v, dropout_p=sa.dropout_prob if sa.training else 0.0, scale=sa.scaling
    ).transpose(1, 2).reshape(b, 1, h * d)
    cls_hidden = layer.attention.output(context, cls_normed) + cls_in  # first residual
    return layer.output(layer.intermediate(layer.layernorm_after(cls_hidden)), cls_hidden)


def _classifier_forward(
    self: ViTForImageClassification, pixel_values: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
    output_attentions: bool | None = None, output_hidden_states: bool | None = None,
    interpolate_pos_encoding: bool | None = None, return_dict: bool | None = None,
) -> ImageClassifierOutput | tuple:
    vit, cfg = self.vit, self.config
    covered = (
        pixel_values is not None and head_mask is None and labels is None and not interpolate_pos_encoding
        and not (cfg.output_attentions if output_attentions is None else output_attentions)
        and not (cfg.output_hidden_states if output_hidden_states is None else output_hidden_states)
        and (cfg.use_return_dict if return_dict is None else return_dict)
        and cfg._attn_implementation == "sdpa" and not (vit.encoder.gradient_checkpointing and self.training)
        and len(vit.encoder.layer) > 0
    )
    if not covered:
        return type(self).forward(self, pixel_values, head_mask, labels, output_attentions,
                                  output_hidden_states, interpolate_pos_encoding, return_dict)
    # as ViTModel.forward: the input follows the patch embedding's dtype (bf16 weights)
    pixel_values = pixel_values.to(vit.embeddings.patch_embeddings.projection.weight.dtype)
    hidden = vit.embeddings(pixel_values)
    *layers, last = vit.encoder.layer
    for layer in layers:
        hidden = layer(hidden)[0]
    cls = vit.layernorm(_cls_last_layer(last, hidden))
    return ImageClassifierOutput(logits=self.classifier(cls[:, 0]))


def _intermediate_forward(self: ViTIntermediate, hidden_states: torch.Tensor) -> torch.Tensor:
    from vit_train.kernels.fused_mlp import linear_gelu_autocast

    return linear_gelu_autocast(hidden_states, self.dense.weight, self.dense.bias)


def _fusable_mlp(module: ViTIntermediate) -> bool:
    act = module.intermediate_act_fn
    return (isinstance(act, GELUActivation) and act.act is F.gelu and isinstance(module.dense, nn.Linear)
            and module.dense.bias is not None)


def _patchable(module: ViTPatchEmbeddings) -> bool:
    conv = module.projection
    return (isinstance(conv, nn.Conv2d) and conv.stride == conv.kernel_size and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1)


def apply_fast_forwards(model: nn.Module, cls_only_last_layer: bool = True, patch_embedding: bool = True,
                        fused_mlp: bool = False) -> int:
    """Bind the faster forwards to every ViT self-attention and (``patch_embedding``) patch-embedding
    module of ``model`` (an unsharded model), with ``cls_only_last_layer`` to an image classifier
    (not for pipeline stages, whose forwards ColossalAI replaces) and with ``fused_mlp`` (for
    compiled models, :mod:`vit_train.kernels.fused_mlp`) to the first half of every MLP with exact GELU;
    returns how many modules were changed."""
    changed = 0
    for module in model.modules():
        if cls_only_last_layer and isinstance(module, ViTForImageClassification):
            module.forward = types.MethodType(_classifier_forward, module)
            changed += 1
        elif isinstance(module, ViTSelfAttention) and isinstance(module.query, nn.Linear):
            module.forward = types.MethodType(_self_attention_forward, module)
            changed += 1
        elif fused_mlp and isinstance(module, ViTIntermediate) and _fusable_mlp(module):
            module.forward = types.MethodType(_intermediate_forward, module)
            changed += 1
        elif patch_embedding and isinstance(module, ViTPatchEmbeddings) and _patchable(module):
            module.forward = types.MethodType(_patch_embeddings_forward, module)
            changed += 1
    return changed
