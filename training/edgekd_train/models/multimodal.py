"""Multimodal patch transformers (methods.md section 5): a cross-attention teacher over several
image modalities, a camera-only student, and a small student that tolerates missing modalities.

Every model takes its tensors positionally in the order of ``input_names`` (``inputs_of`` in
``models/__init__.py`` picks them from a batch), so one ONNX graph has one named input each.
Attention is written out (softmax(QK^T/sqrt(d)) V) rather than ``nn.MultiheadAttention``: the
maps EDAM distils are then the very tensors the forward uses, and export gives plain
MatMul/Softmax nodes. There is no dropout, so eval and train forwards agree and nothing
training-only reaches the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from . import register_model

Attention = dict[str, torch.Tensor]  # layer name -> (B, heads, Nq, Nk), rows sum to 1


class PatchEmbed(nn.Module):
    """Non-overlapping conv patchify plus a learned position embedding: (B,C,H,W) -> (B,N,D)."""

    def __init__(self, in_chans: int, dim: int, image_size: int, patch: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq, d = xq.shape
        q = self.q(xq).reshape(b, nq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(xkv).reshape(b, xkv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, nq, d)), attn


class Block(nn.Module):
    """Pre-norm transformer block; with a context it is cross-attention (queries from x, keys and
    values from the context), without one self-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, cross: bool = False):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm_q(x)
        kv = q if self.norm_kv is None or context is None else self.norm_kv(context)
        a, attn = self.attn(q, kv)
        x = x + a
        return x + self.mlp(self.norm_mlp(x)), attn


class MultimodalViT(nn.Module):
    """One token stream per modality. Each layer runs self-attention in every stream, then (with
    two or more modalities) cross-attention of every stream onto the others' tokens. The head
    reads the concatenated mean-pooled streams.

    Attention maps are named ``"<modality>.self<l>"`` and ``"<modality>.cross<l>"``; a cross map
    has the stream's tokens as queries and the other streams' tokens (concatenated in
    ``modalities`` order) as keys.

    Each modality in ``optional`` takes a ``"<name>_present"`` input, float (B,) 1.0/0.0, after
    the images. Where it is 0 the stream's tokens become a learned "missing" token (plus the
    position embedding) via ``torch.where``, so one graph serves every subset of modalities and the
    missing image's contents cannot reach the output.
    """

    def __init__(
        self,
        modalities: Sequence[tuple[str, int]],
        num_classes: int,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        optional: Sequence[str] = (),
    ):
        super().__init__()
        names = [m for m, _ in modalities]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities must be non-empty with distinct names, got {names}")
        unknown = [m for m in optional if m not in names]
        if unknown:
            raise ValueError(f"optional names modalities {unknown} that are not in modalities {names}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if len(optional) == len(names):
            raise ValueError("optional: at least one modality must always be present")
        self.modalities = tuple(names)
        self.optional = tuple(m for m in names if m in optional)
        self.input_names: tuple[str, ...] = self.modalities + tuple(f"{m}_present" for m in self.optional)
        self.depth = depth
        self.embed = nn.ModuleDict({m: PatchEmbed(c, dim, image_size, patch) for m, c in modalities})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in self.optional})
        self.self_blocks = nn.ModuleList(nn.ModuleDict({m: Block(dim, heads) for m in names}) for _ in range(depth))
        cross = len(names) > 1
        self.cross_blocks = nn.ModuleList(
            nn.ModuleDict({m: Block(dim, heads, cross=True) for m in names}) if cross else nn.ModuleDict()
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim * len(names))
        self.fc = nn.Linear(dim * len(names), num_classes)
        self.num_features = dim * len(names)

    def _tokens(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        given = dict(zip(self.input_names, inputs, strict=True))
        tokens = {m: self.embed[m](given[m]) for m in self.modalities}
        for m in self.optional:
            present = given[f"{m}_present"].reshape(-1, 1, 1) > 0.5
            tokens[m] = torch.where(present, tokens[m], self.missing[m] + self.embed[m].pos)
        return tokens

    def forward_all(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Attention]:
        """(pooled features (B, num_features), logits, attention maps) in one forward."""
        x = self._tokens(inputs)
        maps: Attention = {}
        for layer in range(self.depth):
            for m in self.modalities:
                x[m], maps[f"{m}.self{layer}"] = self.self_blocks[layer][m](x[m])
            if len(self.cross_blocks[layer]):
                # Every stream attends to the others as they were before this cross step.
                ctx = dict(x)
                for m in self.modalities:
                    others = torch.cat([ctx[o] for o in self.modalities if o != m], dim=1)
                    x[m], maps[f"{m}.cross{layer}"] = self.cross_blocks[layer][m](ctx[m], others)
        f = self.norm(torch.cat([x[m].mean(dim=1) for m in self.modalities], dim=1))
        return f, self.fc(f), maps

    def forward_attention(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, Attention]:
        _, logits, maps = self.forward_all(*inputs)
        return logits, maps

    def forward_pooled(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, logits, _ = self.forward_all(*inputs)
        return f, logits

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_all(*inputs)[1]


Inputs = Sequence[tuple[str, int, bool]]  # (name, channels, optional), as the card lists them


def _layout(in_chans: int, inputs: Inputs | None) -> tuple[list[tuple[str, int]], list[str]]:
    """(modalities, optional names) from the card's inputs; without them, the inspection set's
    rgb + height (in_chans is the camera stream's, the height map is 1 channel; height optional
    where a model takes presence inputs)."""
    if inputs is None:
        inputs = [("rgb", in_chans, False), ("height", 1, True)]
    return [(name, channels) for name, channels, _ in inputs], [name for name, _, opt in inputs if opt]


@register_model("mm-vit-teacher")
def mm_vit_teacher(
    num_classes: int = 10, in_chans: int = 3, inputs: Inputs | None = None, image_size: int = 32, patch: int = 4
) -> nn.Module:
    """rgb + height cross-attention teacher, dim 64, 2 layers, 4 heads (282,250 params at
    3+1 channels, 32x32, 10 classes). It takes no presence inputs: a missing modality reaches it
    as the zeros the data path fills in."""
    modalities, _ = _layout(in_chans, inputs)
    return MultimodalViT(modalities, num_classes, image_size, patch, dim=64, depth=2, heads=4)


@register_model("vit-rgb-student")
def vit_rgb_student(
    num_classes: int = 10, in_chans: int = 3, inputs: Inputs | None = None, image_size: int = 32, patch: int = 4
) -> nn.Module:
    """Camera-only student: one self-attention stream, dim 48, 2 layers, 4 heads, so its maps line
    up with the teacher's per layer (43,930 params at 3 channels, 32x32, 10 classes:
    6.4x fewer than the teacher)."""
    modalities, optional = _layout(in_chans, inputs if inputs is not None else [("rgb", in_chans, False)])
    if len(modalities) != 1 or optional:
        raise ValueError(f"vit-rgb-student sees one required input, not {[m for m, _ in modalities]}")
    return MultimodalViT(modalities, num_classes, image_size, patch, dim=48, depth=2, heads=4)


@register_model("mm-vit-missing-student")
def mm_vit_missing_student(
    num_classes: int = 10, in_chans: int = 3, inputs: Inputs | None = None, image_size: int = 32, patch: int = 4
) -> nn.Module:
    """The teacher's layout at dim 32, 1 layer, 2 heads; each optional input takes a presence
    input (41,322 params at 3+1 channels, 32x32, 10 classes)."""
    modalities, optional = _layout(in_chans, inputs)
    return MultimodalViT(modalities, num_classes, image_size, patch, dim=32, depth=1, heads=2, optional=optional)
