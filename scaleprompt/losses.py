"""Losses and metrics as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP logits ``logit_scale.exp() * normalize(image) @ normalize(text).T``: ``image_features`` ``[B, E]`` x
    ``text_features`` ``[C, E]`` -> ``[B, C]`` (``logit_scale``: the log of the temperature's inverse). Always in
    fp32: features of a bf16 / fp16 model are normalized, compared and scaled in fp32 (cosines rounded to 2^-9
    flip near-ties among 1000 classes); an fp32 model's numbers are unchanged."""
    image, text = F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)
    return logit_scale.float().exp() * image @ text.t()  # [B, C]


def per_image_cosine_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """Logits when every image has its own class text features (CoCoOp): ``image_features`` ``[B, E]`` x
    ``text_features`` ``[B, C, E]`` -> ``[B, C]``, scaled by ``logit_scale.exp()``; in fp32 as
    :func:`cosine_logits`."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    return logit_scale.float().exp() * torch.einsum("be,bce->bc", img, txt)


def reformation_loss(prompted: Tensor, frozen: Tensor, tau: float = 1.0) -> Tensor:
    """ProVP-Ref's contrastive feature re-formation.

    ``CE((f_p @ f_c^T) / tau, arange(B))`` with ``f_p`` / ``f_c`` the L2-normalized prompted and frozen image
    features ``[B, E]`` (``prompted``, ``frozen``) of the same augmented images, ``tau`` the temperature: each
    prompted feature must pick its own frozen feature among the batch's. One direction only; ``frozen`` is
    detached (the frozen branch never gets gradient).
    """
    f_p = F.normalize(prompted.float(), dim=-1)  # (in fp32 under a bf16 / fp16 model, as the logits)
    f_c = F.normalize(frozen.detach().float(), dim=-1)
    sims = f_p @ f_c.t() / tau  # [B, B]
    return F.cross_entropy(sims, torch.arange(sims.shape[0], device=sims.device))


def multi_positive_clip_loss(logits: Tensor, matches: Tensor) -> Tensor:
    """Symmetric CLIP loss when a caption can be true of several images (micro-world pretraining).

    ``logits`` ``[N, N]`` (image i, caption j); ``matches`` ``[N, N]`` bool, caption j true of image i, with a
    true diagonal. Image -> text: cross-entropy against the uniform distribution over the captions true of the
    image; text -> image: over the images the caption is true of. Mean of the two. With ``matches = eye`` it is
    CLIP's loss; other true pairs are never pushed apart (no false negatives)."""
    m = matches.to(logits.dtype)
    image_to_text = -(m / m.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(m / m.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1] of ``logits`` ``[B, C]`` against ``labels`` ``[B]``."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()
