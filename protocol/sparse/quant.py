"""2-bit quantizer of the selected values of one tensor, with a per-tensor table.

Over the selected values v: mu = mean, sigma = population std. Four bins with
edges mu + sigma * (-1.5, 0, +1.5); values beyond mu +- 3 sigma fall into the
outer bins. The code of v is its bin number (0..3) and decodes to table[code],
where the table holds the mean of the values in each bin, clamped to the bin's
interval [mu + sigma * (-3, -1.5, 0, 1.5)[b], mu + sigma * (-1.5, 0, 1.5, 3)[b]]
(the clamp keeps a few far outliers from dragging an outer entry out of its
bin). An empty bin gets its centre mu + sigma * (-2.25, -0.75, 0.75, 2.25).

Bound: every bin interval is 1.5 sigma wide and both v and table[code(v)] lie in
it, so |v - table[code(v)]| <= 1.5 sigma for every v within mu +- 3 sigma.
With sigma = 0 every table entry equals mu.
"""

from __future__ import annotations

import torch

from protocol.errors import NonFiniteValueError

N_LEVELS = 4
_EDGES = (-1.5, 0.0, 1.5)
_LOWER = (-3.0, -1.5, 0.0, 1.5)
_UPPER = (-1.5, 0.0, 1.5, 3.0)
_CENTRES = (-2.25, -0.75, 0.75, 2.25)


def quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (codes uint8 shaped like `values`, table float32[4])."""
    # statistics in float64: the values are few (1/64 of the tensor) and the
    # bound above should not be eaten by float32 rounding of mu and sigma
    v = values.reshape(-1).to(torch.float64)
    mu = v.mean()
    sigma = v.std(correction=0) if v.numel() > 1 else torch.zeros_like(mu)

    def at(offsets: tuple[float, ...]) -> torch.Tensor:
        return mu + sigma * torch.tensor(offsets, dtype=torch.float64, device=v.device)

    edges = at(_EDGES)
    codes = (v.unsqueeze(1) >= edges).sum(1)
    sums = torch.zeros(N_LEVELS, dtype=torch.float64, device=v.device).index_add_(0, codes, v)
    counts = torch.bincount(codes, minlength=N_LEVELS).to(torch.float64)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), at(_CENTRES))
    table = torch.minimum(torch.maximum(means, at(_LOWER)), at(_UPPER)).to(torch.float32)
    if not bool(torch.isfinite(table).all()):
        raise NonFiniteValueError("selected values are not all finite")
    return codes.to(torch.uint8).reshape(values.shape), table


def dequantize(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Float32 values table[codes], on the codes' device."""
    return table.to(codes.device)[codes.to(torch.int64)]
