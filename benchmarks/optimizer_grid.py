"""The optimizer study's grid (benchmarks/optimizer_study.py): the base setting, the
methods' overrides and every run as (name, group, overrides of BASE). A run's key is
its settings, so a row added here never changes an existing run's key; a setting added
to BASE would change every key and rerun the whole grid.
"""

from __future__ import annotations

import itertools
from typing import Any

BASE: dict[str, Any] = {
    "optimizer": "sparseloco", "miners": 4, "inner_steps": 30, "k": 64, "error_decay": 0.95,
    "outer_lr": 1.0, "outer_momentum": None, "inner_lr": 1e-3, "batch_size": 8,
    "inner_reset": False, "index_coding": "gap",
}
DILOCO = {"optimizer": "diloco", "outer_lr": 0.7, "outer_momentum": 0.9, "error_decay": None}
DDP = {"optimizer": "ddp", "outer_lr": None, "error_decay": None}
ADAMW = {**DILOCO, "miners": 1, "outer_lr": 1.0, "outer_momentum": 0.0}
# the seeds beyond 0 of the recommended setting, its DiLoCo references and DDP
SEEDS = (1, 2, 3, 4, 5, 6)
# the setting closest to DDP on tiny: the recommended one at k=256 and outer lr 3
CLOSEST = "SparseLoCo H=5 inner_reset outer lr 3, public second moment 0.9 inner lr 2e-3 k=256"
CLOSEST_SETTINGS = {"inner_steps": 5, "inner_reset": True, "outer_lr": 3.0,
                    "public_second_moment": 0.9, "inner_lr": 2e-3, "k": 256}
# the recommended setting (below) at inner lr 3e-3
RECOMMENDED_AT_3E3 = ("SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 "
                      "inner lr 3e-3")
# M = 8: the recommended setting, plain averaging and DDP (the pair table's M = 8 rows)
M8_REFERENCES = (
    ("SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3 M=8",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
      "inner_lr": 2e-3, "miners": 8}),
    ("DiLoCo H=5 lr 1 μ 0 inner_reset M=8",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": 1.0, "outer_momentum": 0.0,
      "miners": 8}),
    ("DDP M=8", {**DDP, "miners": 8}))
# H = 3: the recommended setting and plain averaging (the pair table's H = 3 rows)
H3_REFERENCES = (
    ("SparseLoCo H=3 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3",
     {"inner_steps": 3, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
      "inner_lr": 2e-3}),
    ("DiLoCo H=3 lr 1 μ 0 inner_reset",
     {**DILOCO, "inner_steps": 3, "inner_reset": True, "outer_lr": 1.0, "outer_momentum": 0.0}))
# H = 3 with eight miners: both of the above at M = 8 (against DDP M=8)
M8_H3_REFERENCES = tuple((f"{name} M=8", {**over, "miners": 8}) for name, over in H3_REFERENCES)
# the setting closest to DDP on tiny (k = 256, outer lr 3) at H = 3
CLOSEST_H3 = (CLOSEST.replace("H=5", "H=3"), {**CLOSEST_SETTINGS, "inner_steps": 3})
# H = 3 on small: the recommended setting at small's inner lr (1e-3, the default); its seed 0
# is an early tune-public row
SMALL_H3 = ("SparseLoCo H=3 inner_reset outer lr 2.5, public second moment 0.9",
            {"inner_steps": 3, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9})


def _seeded(refs: Any, seeds: Any, group: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """Each (name, overrides) of refs at each seed: seed 0 keeps the name and takes group,
    the others are named "<name> seed <n>" in the group "seeds"."""
    return tuple((name + (f" seed {seed}" if seed else ""), "seeds" if seed else group,
                  {**over, "seed": seed}) for name, over in refs for seed in seeds)

# (name, group, overrides of BASE; "token_share" scales the budget, "sparsity" names a
# study-only SparseLoCo variant of node/outer/ablations.py); quick is a prefix of full, in
# order of importance
FULL: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("SparseLoCo base", "base", {}),
    ("DiLoCo base", "base", DILOCO),
    ("DDP base", "base", DDP),
    ("AdamW batch 32 (M=1)", "gap", {**DDP, "miners": 1, "batch_size": 32}),
    ("AdamW batch 8 (M=1)", "gap", ADAMW),
    ("AdamW batch 8, ¼ tokens", "gap", {**ADAMW, "token_share": 0.25}),
    ("DiLoCo lr 1 μ 0", "gap", {**DILOCO, "outer_lr": 1.0, "outer_momentum": 0.0}),
    ("SparseLoCo inner_reset", "reset", {"inner_reset": True}),
    ("SparseLoCo H=10", "H", {"inner_steps": 10}),
    ("DiLoCo H=10", "H", {**DILOCO, "inner_steps": 10}),
    ("SparseLoCo H=100", "H", {"inner_steps": 100}),
    ("DDP inner lr 2e-3", "ddp-lr", {**DDP, "inner_lr": 2e-3}),
    ("SparseLoCo inner lr 2e-3", "inner-lr", {"inner_lr": 2e-3}),
    ("SparseLoCo M=8", "M", {"miners": 8}),
    ("SparseLoCo H=10 inner_reset", "reset", {"inner_steps": 10, "inner_reset": True}),
    ("SparseLoCo k=256", "k", {"k": 256}),
    ("DDP inner lr 5e-4", "ddp-lr", {**DDP, "inner_lr": 5e-4}),
    ("SparseLoCo M=1", "M", {"miners": 1}),
    ("SparseLoCo β=0.9", "beta", {"error_decay": 0.9}),
    ("SparseLoCo β=0.99", "beta", {"error_decay": 0.99}),
    ("SparseLoCo outer lr 0.65", "outer-lr", {"outer_lr": 0.65}),
    ("SparseLoCo k=16", "k", {"k": 16}),
    ("SparseLoCo β=0", "beta", {"error_decay": 0.0}),
    ("SparseLoCo outer lr 0.4", "outer-lr", {"outer_lr": 0.4}),
    ("DDP inner lr 4e-3", "ddp-lr", {**DDP, "inner_lr": 4e-3}),
    ("DiLoCo lr 1 μ 0.9", "diloco", {**DILOCO, "outer_lr": 1.0}),
    ("SparseLoCo unquantised", "sparsity", {"sparsity": "unquantised"}),
    ("SparseLoCo random-k", "sparsity", {"sparsity": "random-k"}),
    ("DiLoCo lr 0.7 μ 0", "diloco", {**DILOCO, "outer_momentum": 0.0}),
    ("DiLoCo H=100", "H", {**DILOCO, "inner_steps": 100}),
    ("DDP M=8", "M", {**DDP, "miners": 8}),
    ("DiLoCo M=8", "M", {**DILOCO, "miners": 8}),
    ("SparseLoCo fixed12", "wire", {"index_coding": "fixed12"}),
    # about the bytes of the 2-bit base: is 2-bit top-64 better than fp32 top-16?
    ("SparseLoCo unquantised k=16", "sparsity", {"sparsity": "unquantised", "k": 16}),
    # does Nesterov DiLoCo prefer few windows because of its momentum? (μ 0 at H = 10, 100)
    ("DiLoCo H=10 μ 0", "diloco-H", {**DILOCO, "inner_steps": 10, "outer_momentum": 0.0}),
    ("DiLoCo H=100 μ 0", "diloco-H", {**DILOCO, "inner_steps": 100, "outer_momentum": 0.0}),
    ("SparseLoCo H=5", "H", {"inner_steps": 5}),
    ("SparseLoCo H=5 inner_reset", "reset", {"inner_steps": 5, "inner_reset": True}),
    ("SparseLoCo H=10 β=0.99", "H10", {"inner_steps": 10, "error_decay": 0.99}),
    ("SparseLoCo H=10 outer lr 1.3", "H10", {"inner_steps": 10, "outer_lr": 1.3}),
    ("SparseLoCo H=10 outer lr 1.6", "H10", {"inner_steps": 10, "outer_lr": 1.6}),
    ("SparseLoCo H=5 outer lr 1.3", "H", {"inner_steps": 5, "outer_lr": 1.3}),
    # how far does the gap to DDP close as H shrinks (5x the rounds of H = 10)?
    ("SparseLoCo H=2", "H", {"inner_steps": 2}),
    ("DiLoCo H=2 lr 1 μ 0", "diloco-H",
     {**DILOCO, "inner_steps": 2, "outer_lr": 1.0, "outer_momentum": 0.0}),
    # the network's setting: a fresh inner AdamW each window (the replay proof needs it)
    ("SparseLoCo H=5 inner_reset outer lr 1.3", "reset",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.3}),
    ("SparseLoCo H=10 inner_reset outer lr 1.3", "reset",
     {"inner_steps": 10, "inner_reset": True, "outer_lr": 1.3}),
    ("SparseLoCo H=10 outer lr 2", "H10", {"inner_steps": 10, "outer_lr": 2.0}),
    ("SparseLoCo H=10 inner_reset outer lr 1.6", "reset",
     {"inner_steps": 10, "inner_reset": True, "outer_lr": 1.6}),
    ("SparseLoCo H=5 inner_reset outer lr 1.6", "reset",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.6}),
    # DiLoCo under the same reset, at the same H (the network resets whatever the method)
    ("DiLoCo H=5 inner_reset", "reset", {**DILOCO, "inner_steps": 5, "inner_reset": True}),
    ("DiLoCo H=5 lr 1 μ 0 inner_reset", "reset",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": 1.0, "outer_momentum": 0.0}),
    ("DiLoCo H=5", "H", {**DILOCO, "inner_steps": 5}),
    ("SparseLoCo H=5 inner_reset outer lr 2", "reset",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.0}),
    # the reset's cost: AdamW's first steps from fresh state are sign-like on every entry;
    # a larger ε damps the entries whose gradients are small (replayable: a run-spec value)
    *((f"SparseLoCo H=5 inner_reset outer lr 1.6 ε {eps:g}", "eps",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.6, "inner_eps": eps})
      for eps in (1e-5, 1e-4, 1e-6, 1e-3, 3e-5)),
    ("DiLoCo H=5 inner_reset ε 1e-05", "eps",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "inner_eps": 1e-5}),
    # which moment does the reset cost? carry the second, forget only the first (study only)
    ("SparseLoCo H=5 inner_reset outer lr 1.6, second moment kept", "reset-scope",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.6, "reset_scope": "first_moment"}),
    # a replayable second moment: an EMA over windows of one public batch's squared gradient
    *((f"SparseLoCo H=5 inner_reset outer lr 1.6, public second moment {decay:g}", "reset-scope",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.6, "public_second_moment": decay})
      for decay in (0.9, 0.7)),
    *((f"SparseLoCo H=10 inner_reset outer lr 1.6{tag}", "reset-scope",
       {"inner_steps": 10, "inner_reset": True, "outer_lr": 1.6, **over})
      for tag, over in ((", public second moment 0.9", {"public_second_moment": 0.9}),
                        (", second moment kept", {"reset_scope": "first_moment"}))),
    *((f"SparseLoCo H={h} inner_reset outer lr 2, public second moment 0.9", "reset-scope",
       {"inner_steps": h, "inner_reset": True, "outer_lr": 2.0, "public_second_moment": 0.9})
      for h in (5, 10)),
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9", "reset-scope",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": lr, "public_second_moment": 0.9})
      for lr in (2.5, 3.0)),
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 seed {seed}",
       "seeds", {"inner_steps": 5, "inner_reset": True, "outer_lr": lr,
                 "public_second_moment": 0.9, "seed": seed})
      for lr in (2.0, 2.5, 3.0) for seed in (1, 2)),
    *((f"DiLoCo H=5 inner_reset seed {seed}", "seeds",
       {**DILOCO, "inner_steps": 5, "inner_reset": True, "seed": seed}) for seed in SEEDS),
    *((f"SparseLoCo H=10 inner_reset outer lr 1.6{tag} seed {seed}", "seeds",
       {"inner_steps": 10, "inner_reset": True, "outer_lr": 1.6, **over, "seed": seed})
      for seed in (1, 2) for tag, over in (("", {}), (", public second moment 0.9",
                                                     {"public_second_moment": 0.9}))),
    ("DiLoCo H=5 inner_reset, public second moment 0.9", "reset-scope",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "public_second_moment": 0.9}),
    *((f"SparseLoCo H=5 inner_reset outer lr 1.6{tag} seed {seed}", "seeds",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 1.6, **over, "seed": seed})
      for seed in (1, 2) for tag, over in (("", {}), (" ε 1e-05", {"inner_eps": 1e-5}),
                                           (", second moment kept",
                                            {"reset_scope": "first_moment"}),
                                           (", public second moment 0.9",
                                            {"public_second_moment": 0.9}))),
    # tuning around the public second moment at outer lr 2.5 (seed 0), each against the
    # same change to Nesterov DiLoCo with the reset where the change applies to both
    *((f"SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9{tag}", "tune-public",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        **over})
      for tag, over in ((" β 0.9", {"error_decay": 0.9}), (" β 0.99", {"error_decay": 0.99}),
                        (" inner lr 2e-3", {"inner_lr": 2e-3}))),
    ("SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.7", "tune-public",
     {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.7}),
    ("DiLoCo H=5 inner_reset inner lr 2e-3", "tune-public",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "inner_lr": 2e-3}),
    *((f"SparseLoCo H={h} inner_reset outer lr 2.5, public second moment 0.9", "tune-public",
       {"inner_steps": h, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9})
      for h in (10, 3)),
    ("DiLoCo H=3 inner_reset", "tune-public", {**DILOCO, "inner_steps": 3, "inner_reset": True}),
    *((f"SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3 "
       f"seed {seed}", "seeds",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        "inner_lr": 2e-3, "seed": seed}) for seed in SEEDS),
    ("SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.7 inner lr 2e-3",
     "tune-public", {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5,
                     "public_second_moment": 0.7, "inner_lr": 2e-3}),
    *((f"DiLoCo H=5 inner_reset inner lr 2e-3 seed {seed}", "seeds",
       {**DILOCO, "inner_steps": 5, "inner_reset": True, "inner_lr": 2e-3, "seed": seed})
      for seed in SEEDS),
    ("DiLoCo H=5 lr 1 μ 0 inner_reset inner lr 2e-3", "tune-public",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": 1.0, "outer_momentum": 0.0,
      "inner_lr": 2e-3}),
    # repeats over seeds (model init, data assignment and held-out sample all follow it)
    *((f"{name} seed {seed}", "seeds", {**over, "seed": seed})
      for seed in (1, 2)
      for name, over in (("SparseLoCo H=10", {"inner_steps": 10}),
                         ("DiLoCo H=10", {**DILOCO, "inner_steps": 10}),
                         ("DiLoCo base", DILOCO), ("DDP base", DDP))),
    *((f"DDP base seed {seed}", "seeds", {**DDP, "seed": seed}) for seed in SEEDS[2:]),
    # the recommended setting's outer lr at its inner lr (2e-3), seeds 0-3
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 inner lr 2e-3"
       + (f" seed {seed}" if seed else ""), "seeds" if seed else "tune-public",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": lr, "public_second_moment": 0.9,
        "inner_lr": 2e-3, "seed": seed}) for lr in (2.0, 3.0) for seed in range(4)),
    # DiLoCo's best outer step on tiny (plain averaging) over the recommended setting's seeds
    *((f"DiLoCo H=5 lr 1 μ 0 inner_reset seed {seed}", "seeds",
       {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": 1.0,
        "outer_momentum": 0.0, "seed": seed}) for seed in SEEDS),
    # how much of the gap to plain averaging is the compression's: the recommended setting
    # with 4x denser top-k, and with unquantised values (seed 0)
    *((f"SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3{tag}",
       "tune-public", {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5,
                       "public_second_moment": 0.9, "inner_lr": 2e-3, **over})
      for tag, over in ((" k=256", {"k": 256}), (" unquantised", {"sparsity": "unquantised"}),
                        (" k=128", {"k": 128}), (" k=512", {"k": 512}))),
    *((f"SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3 k={k} "
       f"seed {seed}", "seeds",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        "inner_lr": 2e-3, "k": k, "seed": seed}) for k in (256, 128, 512) for seed in SEEDS),
    # does a denser top-k want another outer lr? (seed 0)
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 inner lr 2e-3 "
       f"k={k}", "tune-public", {"inner_steps": 5, "inner_reset": True, "outer_lr": lr,
                                 "public_second_moment": 0.9, "inner_lr": 2e-3, "k": k})
      for lr in (1.6, 3.5) for k in (256, 512)),
    # small wants inner lr 1e-3 (the default): the network's setting at denser top-k there
    *((f"SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 k={k}", "tune-public",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        "k": k}) for k in (256, 512)),
    # a denser top-k on small at another outer lr (inner lr 1e-3)
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 k=256",
       "tune-public", {"inner_steps": 5, "inner_reset": True, "outer_lr": lr,
                       "public_second_moment": 0.9, "k": 256}) for lr in (2.0, 3.0)),
    # the closest setting to DDP on tiny (k=256) tuned further: inner lr 3e-3, β, outer lr
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 inner lr {ilr}"
       f"{tag}", "tune-public",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": lr, "public_second_moment": 0.9,
        "inner_lr": float(ilr), **over})
      for lr, ilr, tag, over in ((2.5, "3e-3", "", {}), (2.5, "3e-3", " k=256", {"k": 256}),
                                 (2.5, "2e-3", " k=256 β 0.99", {"k": 256, "error_decay": 0.99}),
                                 (3.0, "2e-3", " k=256", {"k": 256}))),
    *((f"{RECOMMENDED_AT_3E3} seed {seed}", "seeds",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        "inner_lr": 3e-3, "seed": seed}) for seed in SEEDS),
    *((f"{CLOSEST} seed {seed}", "seeds", {**CLOSEST_SETTINGS, "seed": seed}) for seed in SEEDS),
    *((f"{RECOMMENDED_AT_3E3.replace('3e-3', '4e-3')}" + (f" seed {seed}" if seed else ""),
       "seeds" if seed else "tune-public",
       {"inner_steps": 5, "inner_reset": True, "outer_lr": 2.5, "public_second_moment": 0.9,
        "inner_lr": 4e-3, "seed": seed}) for seed in range(4)),
    # plain averaging extrapolated: DiLoCo without momentum at outer lr above 1
    *((f"DiLoCo H=5 lr {lr:g} μ 0 inner_reset", "tune-public",
       {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": lr, "outer_momentum": 0.0})
      for lr in (1.5, 2.0, 3.0)),
    # three more seeds of the setting closest to DDP and of DDP itself
    *((f"{name} seed {seed}", "seeds", {**over, "seed": seed}) for seed in (7, 8, 9)
      for name, over in ((CLOSEST, CLOSEST_SETTINGS), ("DDP base", DDP))),
    # M = 8: the sparse step's gain should fall as picks overlap less, wanting a larger
    # outer lr; against plain averaging and DDP (its own lr too) at M = 8
    *((f"SparseLoCo H=5 inner_reset outer lr {lr:g}, public second moment 0.9 inner lr 2e-3 "
       "M=8", "M8", {"inner_steps": 5, "inner_reset": True, "outer_lr": lr,
                     "public_second_moment": 0.9, "inner_lr": 2e-3, "miners": 8})
      for lr in (2.5, 3.5, 5.0)),
    (M8_REFERENCES[1][0], "M8", M8_REFERENCES[1][1]),
    ("DDP M=8 inner lr 2e-3", "M8", {**DDP, "miners": 8, "inner_lr": 2e-3}),
    *((f"{name} seed {seed}", "seeds", {**over, "seed": seed}) for seed in (1, 2)
      for name, over in M8_REFERENCES),
    # small: plain averaging at DDP's best inner lr there (5e-4)
    ("DiLoCo H=5 lr 1 μ 0 inner_reset inner lr 5e-4", "tune-public",
     {**DILOCO, "inner_steps": 5, "inner_reset": True, "outer_lr": 1.0, "outer_momentum": 0.0,
      "inner_lr": 5e-4}),
    # small: DDP at its best inner lr on a second seed (each small gap to DDP was one seed)
    ("DDP inner lr 5e-4 seed 1", "seeds", {**DDP, "inner_lr": 5e-4, "seed": 1}),
    # M = 8: seeds 3-6 of its three references; outer lr 2 (1/gain at M = 8 is 2.67)
    *((f"{name} seed {seed}", "seeds", {**over, "seed": seed}) for seed in SEEDS[2:]
      for name, over in M8_REFERENCES),
    ("SparseLoCo H=5 inner_reset outer lr 2, public second moment 0.9 inner lr 2e-3 M=8", "M8",
     {**M8_REFERENCES[0][1], "outer_lr": 2.0}),
    # a shorter H (more exchanges of the same 206x step): the recommended setting and plain
    # averaging at H = 3, seeds 0-2 (H3_REFERENCES)
    *_seeded(H3_REFERENCES, range(3), "H3"),
    # small: DDP below 5e-4 (5e-4 was the lowest tried there and the best)
    ("DDP inner lr 3e-4", "ddp-lr", {**DDP, "inner_lr": 3e-4}),
    # H = 3 at M = 4: seeds 3-6 of the recommended setting and of plain averaging
    *_seeded(H3_REFERENCES, SEEDS[2:], "seeds"),
    # both gains together: H = 3 and eight miners, seeds 0-6 (M8_H3_REFERENCES)
    *_seeded(M8_H3_REFERENCES, range(7), "M8"),
    # small: H = 3 at small's inner lr, seed 1 (seed 0 is the tune-public row above)
    *_seeded((SMALL_H3,), (1,), "seeds"),
    # small: a third seed of H = 3 and of DDP at its best inner lr
    *_seeded((SMALL_H3, ("DDP inner lr 5e-4", {**DDP, "inner_lr": 5e-4})), (2,), "seeds"),
    # tiny: both levers on the setting closest to DDP, H = 3 at k = 256, seeds 0-9 (DDP
    # base has ten)
    *_seeded((CLOSEST_H3,), range(10), "H3"),
)
GRIDS = {"quick": FULL[:14], "full": FULL, "smoke": FULL[:2]}
# the recommended setting against its references, seed by seed (the report's pair table)
RECOMMENDED = "SparseLoCo H=5 inner_reset outer lr 2.5, public second moment 0.9 inner lr 2e-3"
# small's inner lr (1e-3, the default) under the recommended setting's other values
SMALL_SETTING = RECOMMENDED.removesuffix(" inner lr 2e-3")
# the recommended setting at each top-k density (entries per 64x64 chunk), all seeds
DENSITY = ((64, RECOMMENDED),
           *((k, f"{RECOMMENDED} k={k}") for k in (128, 256, 512)))
PAIRS = ((RECOMMENDED, "DiLoCo H=5 inner_reset"),
         (RECOMMENDED, "DiLoCo H=5 inner_reset inner lr 2e-3"),
         (RECOMMENDED, "DiLoCo H=5 lr 1 μ 0 inner_reset"), (RECOMMENDED, "DDP base"),
         # what the gap to plain averaging is made of: denser top-k, fewer bytes saved
         *((f"{RECOMMENDED} k={k}", other) for k in (128, 256, 512)
           for other in ("DiLoCo H=5 lr 1 μ 0 inner_reset", RECOMMENDED)),
         # small's setting (inner lr 1e-3) against its references (DDP at its best lr on small)
         *((SMALL_SETTING, other) for other in ("DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP base",
                                                "DDP inner lr 5e-4")),
         ("DiLoCo H=5 lr 1 μ 0 inner_reset", "DDP inner lr 5e-4"),
         # the closest to DDP: k=256 at outer lr 3; and the recommended setting at inner lr 3e-3
         *((CLOSEST, other) for other in ("DDP base", "DiLoCo H=5 lr 1 μ 0 inner_reset",
                                          f"{RECOMMENDED} k=256")),
         *((RECOMMENDED_AT_3E3, other) for other in (RECOMMENDED, "DDP base")),
         (RECOMMENDED_AT_3E3.replace("3e-3", "4e-3"), RECOMMENDED),
         # M = 8: the recommended setting against plain averaging and DDP, both at M = 8
         *((a[0], b[0]) for a, b in itertools.combinations(M8_REFERENCES, 2)),
         # H = 3 against plain averaging at H = 3, DDP and the recommended setting (H = 5)
         *((H3_REFERENCES[0][0], other) for other in (H3_REFERENCES[1][0], "DDP base",
                                                      RECOMMENDED)),
         (H3_REFERENCES[1][0], "DDP base"),
         # H = 3 at M = 8 against plain averaging and DDP at M = 8, and against H = 5
         *((M8_H3_REFERENCES[0][0], other) for other in (M8_H3_REFERENCES[1][0], "DDP M=8",
                                                         M8_REFERENCES[0][0])),
         (M8_H3_REFERENCES[1][0], "DDP M=8"),
         ("DDP inner lr 3e-4", "DDP inner lr 5e-4"),
         # k = 256 at H = 3 against DDP, plain averaging at H = 3 and itself at H = 5
         *((CLOSEST_H3[0], other) for other in ("DDP base", H3_REFERENCES[1][0], CLOSEST)),
         # small: H = 3 against DDP, plain averaging and itself at H = 5 (inner lr 1e-3)
         *((SMALL_H3[0], other) for other in ("DDP inner lr 5e-4",
                                               "DiLoCo H=5 lr 1 μ 0 inner_reset", SMALL_SETTING)))
