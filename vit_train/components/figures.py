"""Evaluation images for TensorBoard: a confusion matrix and a strip of misclassified samples.

Drawn with PIL (already a dependency) so no plotting library is needed on compute nodes. Both
return HWC uint8 arrays, the format ``SummaryWriter.add_image(..., dataformats="HWC")`` takes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

_FONT = ImageFont.load_default()


def confusion_image(matrix: torch.Tensor, class_names: Sequence[str], cell: int = 64) -> np.ndarray:
    """Rows = true class, columns = predicted; cells shaded by the row-normalised rate, with counts."""
    n = len(class_names)
    m = matrix.double()
    rates = m / m.sum(1, keepdim=True).clamp(min=1)
    label_w, top = 130, 40
    img = Image.new("RGB", (label_w + n * cell, top + n * cell + 20), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), "true \\ predicted", fill="black", font=_FONT)
    for j, name in enumerate(class_names):
        draw.text((label_w + j * cell + 2, top - 16), name[:10], fill="black", font=_FONT)
    for i, name in enumerate(class_names):
        draw.text((4, top + i * cell + cell // 2 - 6), name[:18], fill="black", font=_FONT)
        for j in range(n):
            shade = int(255 - 200 * float(rates[i, j]))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="gray")
            draw.text((x0 + cell // 2 - 10, y0 + cell // 2 - 6), str(int(m[i, j])), fill="black", font=_FONT)
    draw.text((4, top + n * cell + 4), f"accuracy {float(m.diag().sum() / m.sum().clamp(min=1)):.3f}",
              fill="black", font=_FONT)
    return np.asarray(img)


def misclassified_strip(
    pixels: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 96,
) -> np.ndarray:
    """Up to len(pixels) normalised images side by side, each captioned 'true -> predicted'."""
    k = len(true)
    img = Image.new("RGB", (max(k, 1) * size, size + 28), "white")
    draw = ImageDraw.Draw(img)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    for i in range(k):
        x = (pixels[i].float() * s + m).clamp(0, 1)
        arr = (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        img.paste(Image.fromarray(arr).resize((size, size), Image.NEAREST), (i * size, 0))
        draw.text((i * size + 2, size + 2), class_names[true[i]][:14], fill="darkgreen", font=_FONT)
        draw.text((i * size + 2, size + 14), "-> " + class_names[pred[i]][:11], fill="darkred", font=_FONT)
    return np.asarray(img)
