"""3D CNN + Transformer nodule classifier for CT candidate patches (hybrid as in TransUNet, Chen et al. 2021, over ViT, Dosovitskiy et al., ICLR 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups for a stage: 4 where the width allows, else the largest divisor below it."""
    return math.gcd(channels, 4)


class NoduleNet(nn.Module):
    r"""3D convolutional stem, Transformer encoder over its spatial tokens, and a logit head.

    The stem has one stage per entry of ``channels``: ``Conv3d(k=3, stride=2, padding=1)`` ->
    ``GroupNorm`` -> ``ReLU``, halving the cube's side each time, so a :math:`S^3` patch
    becomes a grid of :math:`(S / 2^{L})^3` cells (``L = len(channels)``; 32 -> 4, 64 tokens).
    GroupNorm keeps no running statistics, so federated averaging of the weights is all
    there is to average (BatchNorm's running means would differ per hospital). Each grid
    cell is projected to a ``dim``-wide token; a learned CLS token is prepended and a
    learned positional embedding added (ViT), and a pre-norm ``nn.TransformerEncoder``
    relates the cells to one another (where the bright structure continues: round nodule
    versus vessel). The head reads the final-LayerNormed CLS token concatenated with the
    element-wise maximum over the cell tokens, then dropout and ``Linear(2 * dim, 1)``.
    The maximum (as in multiple-instance pooling) lets the few cells holding a nodule
    speak directly, so the model learns in the tens of steps a federated run on CPU
    affords; with the CLS token alone it barely moves from chance in that budget.

    Args:
        in_size: Side ``S`` of the cubic input patch in voxels (default: ``32``); must be a
            multiple of ``2 ** len(channels)``.
        channels: Output channels of the stem stages (default: ``(8, 16, 32)``).
        dim: Token width of the Transformer (default: ``32``).
        heads: Attention heads; must divide ``dim`` (default: ``4``).
        layers: Transformer encoder layers (default: ``2``).
        dropout: Dropout in the Transformer layers and before the head (default: ``0.0``:
            with a few hundred patches per site and tens of local steps per run, 0.1 already
            keeps the model at chance noticeably longer).

    Shapes:
        - input: patches :math:`(B, 1, S, S, S)`, float (windowed HU in ``[0, 1]``)
        - output: logits :math:`(B,)` (``sigmoid`` gives the nodule probability)
    """

    def __init__(
        self,
        *,
        in_size: int = 32,
        channels: tuple[int, ...] = (8, 16, 32),
        dim: int = 32,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or any(c < 1 for c in channels):
            raise ValueError(
                f"NoduleNet channels must be a non-empty tuple of widths >= 1; found {channels!r}"
            )
        factor = 2 ** len(channels)
        if in_size < factor or in_size % factor:
            raise ValueError(
                f"NoduleNet in_size must be a positive multiple of 2 ** len(channels) = {factor} "
                f"(each of the {len(channels)} stem stages halves the cube); found in_size={in_size}. "
                "Change the patch size or the number of stages."
            )
        if dim < 1 or heads < 1 or layers < 1:
            raise ValueError(
                f"NoduleNet needs dim, heads and layers >= 1; found dim={dim}, heads={heads}, "
                f"layers={layers}"
            )
        if dim % heads:
            raise ValueError(
                f"NoduleNet heads must divide dim; found dim={dim}, heads={heads} "
                f"(try heads={math.gcd(dim, heads)})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"NoduleNet dropout must be in [0, 1); found {dropout!r}")
        self.in_size = in_size
        self.channels = channels
        self.dim = dim
        self.heads = heads
        self.num_layers = layers
        self.dropout = dropout
        self.grid = in_size // factor
        self.num_tokens = self.grid**3

        stages: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            stages += [
                nn.Conv3d(c_in, c_out, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(_groups(c_out), c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.stem = nn.Sequential(*stages)
        self.proj = nn.Linear(channels[-1], dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all weights (uses the global torch RNG).

        Also gives every encoder layer its own draw (``nn.TransformerEncoder`` starts from
        deep copies of one layer).
        """
        for module in self.modules():
            if module is not self and isinstance(
                module, (nn.Conv3d, nn.Linear, nn.GroupNorm, nn.LayerNorm)
            ):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Stem features as tokens with the CLS token and positions, ``[B, tokens + 1, dim]``."""
        self._check_input(x)
        feats = self.stem(x)  # [B, C, g, g, g]
        tok = self.proj(feats.flatten(2).transpose(1, 2))  # [B, g^3, dim]
        cls = self.cls_token.expand(tok.shape[0], -1, -1)
        out: torch.Tensor = torch.cat([cls, tok], dim=1) + self.pos_embed
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score a batch of patches.

        Args:
            x: Patches, float ``[B, 1, S, S, S]`` with ``S = in_size``.

        Returns:
            One nodule logit per patch, ``[B]``.
        """
        h = self.encoder(self.tokens(x))  # [B, 1 + tokens, dim], final LayerNorm applied
        z = torch.cat([h[:, 0], h[:, 1:].amax(dim=1)], dim=-1)  # CLS and max over cells
        logits: torch.Tensor = self.head(self.head_drop(z)).squeeze(-1)
        return logits

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.in_size
        if x.dim() != 5 or tuple(x.shape[1:]) != (1, s, s, s):
            raise ValueError(
                f"NoduleNet expects patches of shape [B, 1, {s}, {s}, {s}]; found {list(x.shape)} "
                "(was the model built for a different task.patch_size?)"
            )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(in_size={self.in_size}, channels={self.channels}, "
            f"dim={self.dim}, heads={self.heads}, layers={self.num_layers}, "
            f"dropout={self.dropout}, tokens={self.num_tokens}, params={self.num_parameters()})"
        )


def build_nodule_net(task: Any) -> NoduleNet:
    """A :class:`NoduleNet` sized by the task's hyper-parameters.

    Args:
        task: A ``TaskSpec`` (its ``imaging`` section is used), an ``ImagingSpec``, or any
            object with (some of) the attributes ``patch_size``, ``channels``, ``dim``,
            ``heads``, ``layers`` (or ``transformer_layers``) and ``dropout``; a missing
            or ``None`` attribute takes the :class:`NoduleNet` default.

    Raises:
        ValueError: for sizes the model cannot take (see :class:`NoduleNet`).
    """
    spec = getattr(task, "imaging", None) or task

    def get(name: str, default: Any, *aliases: str) -> Any:
        for key in (name, *aliases):
            value = getattr(spec, key, None)
            if value is not None:
                return value
        return default

    return NoduleNet(
        in_size=int(get("patch_size", 32)),
        channels=tuple(int(c) for c in get("channels", (8, 16, 32))),
        dim=int(get("dim", 32)),
        heads=int(get("heads", 4)),
        layers=int(get("layers", 2, "transformer_layers")),
        dropout=float(get("dropout", 0.0)),
    )


@dataclass(frozen=True, eq=False)
class PatchSet:
    """One site's candidate patches of one split (they never leave the site).

    Attributes:
        x: Patches, float32 ``[N, 1, S, S, S]`` (windowed HU in ``[0, 1]``).
        y: Labels, int64 ``[N]``, 1 = nodule, 0 = not a nodule.
        ids: Candidate ids (``series_uid:index``), one per patch.

    Raises:
        ValueError: when the shapes, dtypes, labels or ids do not agree.
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.dtype != torch.float32 or x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(
                f"PatchSet.x must be float32 [N, 1, S, S, S]; found {x.dtype} {list(x.shape)}"
            )
        if not (x.shape[2] == x.shape[3] == x.shape[4]):
            raise ValueError(f"PatchSet.x patches must be cubes; found {list(x.shape[2:])}")
        if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"PatchSet.y must be int64 [N] with N = {x.shape[0]} (len of x); "
                f"found {y.dtype} {list(y.shape)}"
            )
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            bad = sorted(set(y.tolist()) - {0, 1})
            raise ValueError(f"PatchSet.y must hold only 0 and 1; found values {bad}")
        if len(self.ids) != x.shape[0]:
            raise ValueError(
                f"PatchSet.ids must name every patch: {x.shape[0]} patches, {len(self.ids)} ids"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def patch_size(self) -> int:
        """Side ``S`` of the cubic patches."""
        return int(self.x.shape[-1])

    @property
    def num_pos(self) -> int:
        """Number of nodule patches (label 1)."""
        return int(self.y.sum())
