"""The shared shell of the codec wrappers: a loaded model plus where its weights live."""

from __future__ import annotations

import torch


class ModelWrapper:
    """Holds ``self.model`` (an ``nn.Module``) and reports and moves its weights.

    Subclasses add the codec's conventions (normalisation, layouts, sample rates) on top.
    """

    model: torch.nn.Module

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's weights (the network computes in it)."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's weights (inputs are moved there)."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str):
        """Move the weights to ``device`` in place (dtype unchanged); returns ``self``."""
        self.model.to(device=device)
        return self
