"""Random crops and horizontal flips of whole training batches, on the batch's device.

Why it is written here rather than taken from torchvision: torchvision's v2 ``RandomCrop`` and
``RandomHorizontalFlip`` draw one crop offset and one coin per call, so applied to a
B x C x H x W batch they crop and flip every sample of it the same way. The protocols this
reproduces (GEM, DER, Mammoth: ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` in a
dataset's per-sample transform) crop and flip each sample independently, and calling the
transform once per sample is the Python loop over samples this pipeline never runs (a batch is
one index into a uint8 tensor: :mod:`pipeline.data.tasks`). Here every sample's offsets and coin
are drawn at once, and every output pixel's source pixel is computed for the whole batch: one
gather, on whatever device the batch is.

The draws are stateless: each training step seeds a fresh generator from (experiment seed,
task index, step) (:func:`step_seed`), so a run resumed at a task boundary crops and flips
exactly as the uninterrupted run did, with no generator state in its checkpoints.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def step_seed(seed: int, task: int, step: int) -> int:
    """The seed of the augmentation of training step ``step`` of task ``task``.

    A hash rather than arithmetic on the three numbers: no two (seed, task, step) give related
    seeds (``seed * k + step`` would repeat one run's draws in another, shifted by ``k``).
    """
    key = f"crop_flip:{seed}:{task}:{step}".encode()
    # 64 bits: the range torch.Generator.manual_seed takes
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def step_generator(seed: int, task: int, step: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`step_seed`."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, task, step))


def draw_crop_flip(
    n: int, padding: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Each of ``n`` samples' crop offset and flip.

    Returns:
        The shifts (n x 2: rows, columns), each uniform in ``-padding..padding`` (the crop's
        offset in the padded image, ``0..2*padding``, less the padding), and whether each sample
        is flipped (n, bool, probability 1/2).

    Raises:
        ValueError: ``padding`` is negative.
    """
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    shift = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return shift - padding, flip


def apply_crop_flip(x: Tensor, shift: Tensor, flip: Tensor, fill: Tensor | float = 0.0) -> Tensor:
    """Crop each sample of ``x``, padded with ``fill``, at its ``shift``; then flip it
    horizontally where ``flip`` says.

    Output pixel (i, j) of sample b is input pixel ``(i + shift[b, 0], j' + shift[b, 1])``
    with ``j' = W - 1 - j`` if the sample is flipped (else ``j``), or ``fill`` where that pixel
    lies in the padding. The padded image is never built: the source indices are clamped into
    the image for one gather, and the padding's positions are then filled.

    Args:
        x: B x C x H x W, float or uint8, on any device.
        shift: B x 2 (rows, columns), from :func:`draw_crop_flip`.
        flip: B, bool.
        fill: the padding's value: a number, per channel (C), or per sample and channel
            (B x C: a normalised batch's black, which depends on each sample's task).

    Returns:
        A new tensor of ``x``'s shape, dtype and device.
    """
    b, c, h, w = x.shape
    device = x.device
    rows = torch.arange(h, device=device) + shift[:, :1]  # B x H: the source row of each row
    cols = torch.arange(w, device=device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + shift[:, 1:]  # B x W
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    # one gather over each sample's flattened pixels, the same source for every channel (8x
    # faster on a CPU than indexing with four broadcast index tensors)
    source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    index = source.reshape(b, 1, h * w).expand(b, c, h * w)
    gathered = x.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)
    value = torch.as_tensor(fill, dtype=x.dtype, device=device)
    if value.dim():  # (C) or (B, C): broadcast over the pixels
        value = value.reshape(-1, c, 1, 1)
    return torch.where(inside[:, None], gathered, value)


def crop_flip(
    x: Tensor, padding: int, generator: torch.Generator, fill: Tensor | float = 0.0
) -> Tensor:
    """Pad each sample by ``padding`` pixels of ``fill``, take an independent random crop of
    its original size (offsets uniform in ``0..2*padding``) and flip it horizontally with
    probability 1/2: the field's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``,
    per sample, for a whole batch at once.

    Args:
        x: B x C x H x W, float or uint8, on any device.
        padding: pixels added on every side (0: flips only).
        generator: the source of the draws, on ``x``'s device (:func:`step_generator`).
        fill: the padding's value (see :func:`apply_crop_flip`); 0 is black for raw images.

    Raises:
        ValueError: ``padding`` is negative.
    """
    shift, flip = draw_crop_flip(int(x.shape[0]), padding, generator, x.device)
    return apply_crop_flip(x, shift, flip, fill)
