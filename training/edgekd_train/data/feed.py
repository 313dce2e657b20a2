"""Rows of a data set -> the batch contract (``multimodal.make_batch``) the models and
distillers consume, the one way every phase builds its batches.

Training batches are augmented (one geometric draw for every input, so they stay aligned), have
their optional inputs dropped out at the phase's rate and, for CRLD's methods, carry the strong
view of the one image input (``views.ViewMaker``). Evaluation batches are the samples as they
are, or with chosen inputs made missing: how the teacher is measured with the height map zeroed
and how each subset of inputs is calibrated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

import torch

from .multimodal import MultiNormalizer, MultiTensorData, make_batch
from .views import ViewMaker

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Feed:
    normalizer: MultiNormalizer
    optional: tuple[str, ...] = ()  # the inputs a sample may lack (presence keys are written for these)
    dropout_p: float = 0.0  # training only: each optional input of each sample is dropped with this probability
    flip: bool = False
    shift: int = 0
    channels_last: bool = False
    views: ViewMaker | None = None  # CRLD's weak + strong views, for data with one input

    def replace(self, **changes) -> Feed:
        return dataclasses.replace(self, **changes)

    def train_batch(self, data: MultiTensorData, index: torch.Tensor, gen: torch.Generator) -> Batch:
        labels = data.labels[index]
        if self.views is not None:
            (name,) = data.images  # CRLD's views are defined for one image input (config checks it)
            batch = {**self.views(data.images[name][index], gen), "label": labels, "index": index}
            return batch
        batch = make_batch(
            {k: v[index] for k, v in data.images.items()},
            {k: v[index] for k, v in data.present.items()},
            labels,
            index,
            self.normalizer,
            gen,
            self.flip,
            self.shift,
            self.dropout_p,
            list(self.optional),
        )
        return self._memory_format(batch)

    def eval_batch(self, data: MultiTensorData, index: torch.Tensor, missing: Collection[str] = ()) -> Batch:
        """The samples at ``index`` without augmentation; every input in ``missing`` is made
        missing (zeros, presence 0) whether the sample has it or not."""
        present = {k: v[index] & (k not in missing) for k, v in data.present.items()}
        batch = make_batch(
            {k: v[index] for k, v in data.images.items()},
            present,
            data.labels[index],
            index,
            self.normalizer,
            None,
            False,
            0,
            0.0,
            list(self.optional),
        )
        return self._memory_format(batch)

    def _memory_format(self, batch: Batch) -> Batch:
        if not self.channels_last:
            return batch
        return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
