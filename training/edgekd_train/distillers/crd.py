"""CRD, contrastive representation distillation (methods.md section 6, RepDistiller's NCE form),
and EDAM+CRD (section 5.6):

g_s, g_t = L2norm(W_s f_s + b_s), L2norm(W_t f_t + b_t)       pooled features -> feat_dim
P_{i,k}  = exp(<g(i), mem_other[k]> / tau) / Z,  k in {batch["index"][i]} + K negatives
L_anchor = -(1/B) sum_i [log(P_+ / (P_+ + K/M)) + sum_neg log((K/M) / (P_k + K/M))]
crd      = L_anchor(student anchors vs teacher bank) + L_anchor(teacher anchors vs student bank)
total    = CE + beta * crd + alpha * KD_T                (EDAM+CRD adds beta_edam * attn)

Negatives are drawn uniformly from the other rows of the bank: the data path gives no labels for
the whole training set, so RepDistiller's "other classes only" sampling is not available.
After each training forward the bank rows of the batch move towards the new embeddings
(momentum, then L2 renormalisation); no other row changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import feature_dim, features_and_logits, inputs_of
from ..models.multimodal import Attention
from .base import Batch, Distiller, Losses
from .edam import EDAMLoss, require_attention
from .kd import kd_loss


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(f.float()), dim=1)


class ContrastMemory(nn.Module):
    """Student and teacher embedding banks (n_data, dim) plus the NCE normalisers Z, fixed from
    the first batch (0 until then). Buffers only: checkpointed, never optimised."""

    def __init__(self, n_data: int, dim: int, k: int, tau: float, momentum: float):
        super().__init__()
        a = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("mem_s", torch.rand(n_data, dim).mul_(2 * a).sub_(a))
        self.register_buffer("mem_t", torch.rand(n_data, dim).mul_(2 * a).sub_(a))
        self.register_buffer("z_s", torch.zeros(()))
        self.register_buffer("z_t", torch.zeros(()))
        self.k, self.tau, self.momentum = k, tau, momentum

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 1+K) bank rows: the sample's own row, then K uniform draws among the other rows."""
        n = self.mem_s.shape[0]
        r = torch.randint(0, n - 1, (index.shape[0], self.k), device=index.device)
        negatives = r + (r >= index[:, None]).long()
        return torch.cat([index[:, None], negatives], dim=1)

    def _probs(self, anchor: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # fp32 whatever autocast says: exp(<g, m> / 0.07) spans e^-14..e^14.
        scores = torch.exp(torch.einsum("bd,bkd->bk", anchor.float(), bank[rows]) / self.tau)
        with torch.no_grad():  # set once, on the device, without a host sync per step
            z.copy_(torch.where(z == 0, scores.mean() * bank.shape[0], z))
        return scores / z

    def forward(self, g_s: torch.Tensor, g_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows = self.sample(index)
        p_s = self._probs(g_s, self.mem_t, rows, self.z_s)
        p_t = self._probs(g_t, self.mem_s, rows, self.z_t)
        loss = nce_loss(p_s, self.mem_s.shape[0]) + nce_loss(p_t, self.mem_s.shape[0])
        if self.training:
            self.update(g_s, g_t, index)
        return loss

    @torch.no_grad()
    def update(self, g_s: torch.Tensor, g_t: torch.Tensor, index: torch.Tensor) -> None:
        for bank, g in ((self.mem_s, g_s), (self.mem_t, g_t)):
            new = self.momentum * bank[index] + (1.0 - self.momentum) * g.detach()
            bank.index_copy_(0, index, F.normalize(new, dim=1))


def nce_loss(p: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """RepDistiller's NCE critic on (B, 1+K) scores, column 0 the positive; noise prob 1/M."""
    kpn = (p.shape[1] - 1) / n_data
    log_pos = torch.log(p[:, 0] / (p[:, 0] + kpn + eps))
    log_neg = torch.log(kpn / (p[:, 1:] + kpn + eps)).sum(dim=1)
    return -(log_pos + log_neg).mean()


class CRDLoss(nn.Module):
    """Embeds and banks of CRD: everything training-only the method owns."""

    def __init__(self, d_s: int, d_t: int, n_data: int, feat_dim: int, k: int | None, tau: float, momentum: float):
        super().__init__()
        if not isinstance(n_data, int) or n_data < 2:
            raise ValueError(f"n_data must be the training-set size (an int >= 2), got {n_data!r}")
        k = min(4096, n_data - 1) if k is None else k
        if not 1 <= k <= n_data - 1:
            raise ValueError(f"k (negatives) must be in [1, n_data - 1 = {n_data - 1}], got {k}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.embed_s = Embed(d_s, feat_dim)
        self.embed_t = Embed(d_t, feat_dim)
        self.memory = ContrastMemory(n_data, feat_dim, k, tau, momentum)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.memory(self.embed_s(f_s), self.embed_t(f_t), index)


class CRDDistiller(Distiller):
    needs = frozenset({"logits", "features"})
    needs_teacher = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        n_data: int | None = None,
        feat_dim: int = 128,
        k: int | None = None,
        tau: float = 0.07,
        momentum: float = 0.5,
        beta: float = 0.8,
        alpha: float = 0.0,
        T: float = 4.0,
        **_ignored,
    ):
        if teacher is None:
            raise ValueError("crd needs a teacher")
        if n_data is None:
            raise ValueError("crd needs n_data, the number of training samples (memory bank rows)")
        super().__init__(student, teacher)
        self.crd = CRDLoss(feature_dim(student), feature_dim(teacher), n_data, feat_dim, k, tau, momentum)
        self.beta, self.alpha, self.T = float(beta), float(alpha), float(T)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.crd]

    def _pooled(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Attention]:
        """(features, logits, attention maps) of one forward; plain CRD needs no maps."""
        f, z = features_and_logits(model, inputs_of(model, batch))
        return f, z.float(), {}

    def _attention_terms(self, maps_t: Attention, maps_s: Attention) -> tuple[Losses, torch.Tensor | float]:
        """(named terms, their weighted sum for "total"): none for plain CRD."""
        return {}, 0.0

    def forward(self, batch: Batch):
        with torch.no_grad():
            f_t, zt, maps_t = self._pooled(self.teacher, batch)
        f_s, zs, maps_s = self._pooled(self.student, batch)
        ce = F.cross_entropy(zs, batch["label"])
        crd = self.crd(f_s, f_t, batch["index"])
        kd = kd_loss(zs, zt, self.T)
        extra, weighted = self._attention_terms(maps_t, maps_s)
        total = ce + self.beta * crd + self.alpha * kd + weighted
        return {"ce": ce, "crd": crd, "kd": kd, **extra, "total": total}, zs


class EDAMCRDDistiller(CRDDistiller):
    """EDAM + CRD in one objective (methods.md 5.6): one forward per model gives both the pooled
    features for CRD and the attention maps for EDAM."""

    needs = frozenset({"logits", "features", "attention"})

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        layers: Sequence[Sequence[str]] | None = None,
        beta_edam: float = 1.0,
        **crd_params,
    ):
        if teacher is None:
            raise ValueError("edam+crd needs a teacher")
        require_attention(teacher, "teacher")
        require_attention(student, "student")
        super().__init__(student, teacher, **crd_params)
        self.edam = EDAMLoss(layers)
        self.beta_edam = float(beta_edam)

    def _pooled(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Attention]:
        f, z, maps = model.forward_all(*inputs_of(model, batch))
        return f, z.float(), maps

    def _attention_terms(self, maps_t: Attention, maps_s: Attention) -> tuple[Losses, torch.Tensor | float]:
        attn = self.edam(maps_t, maps_s)
        return {"attn": attn}, self.beta_edam * attn
