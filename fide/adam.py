"""Adam for fide's instance optimisations: torch's own update (``torch.optim.adam.adam``) without
``torch.optim.Optimizer``.

Why not ``torch.optim.Adam``: the first ``Optimizer`` a process builds imports ``torch._dynamo`` (its
``add_param_group`` is wrapped by ``torch._disable_dynamo``), 2.1 s on 2 CPU cores, paid by every ``fide register``,
``fide align`` and worker process for a pair that takes ~6 s. The functional update is the same arithmetic (test:
identical trajectories); training (``fide/train``) keeps ``torch.optim.Adam`` for its checkpointable state.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam

__all__ = ["Adam"]


class Adam:
    """``torch.optim.Adam(params, lr=lr, amsgrad=amsgrad)`` with its default betas, eps and no weight decay.

    Args:
        params: leaf tensors with ``requires_grad``, any shapes.
        lr: step size.
        amsgrad: keep the running maximum of the second moment (Reddi et al.), as torch's ``amsgrad``.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, amsgrad: bool = False) -> None:
        self.params = list(params)
        self.lr, self.amsgrad = lr, amsgrad
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        # the running maximum exists only with amsgrad (torch.optim.Adam keeps none either)
        self.max_exp_avg_sqs = [torch.zeros_like(p) for p in self.params] if amsgrad else []
        self.steps = [torch.tensor(0.0) for _ in self.params]  # CPU scalars, as torch.optim.Adam keeps them

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [k for k, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        adam(
            [self.params[k] for k in live],
            [self.params[k].grad for k in live],
            [self.exp_avgs[k] for k in live],
            [self.exp_avg_sqs[k] for k in live],
            [self.max_exp_avg_sqs[k] for k in live] if self.amsgrad else [],
            [self.steps[k] for k in live],
            amsgrad=self.amsgrad,
            beta1=0.9,
            beta2=0.999,
            lr=self.lr,
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
        )
