"""The outer step: which contributions count, how they are aggregated and applied.

SparseLoCo, DiLoCo and the DDP baseline (optimizers.py), deterministic
aggregation (aggregate.py), the selection rule and θ digest (step.py). Pure,
fp32, fixed order: any peer can replay it bit for bit. Imports only
`protocol` (and `node.errors`); it must never read a clock, a random source,
the mesh or the chain.
"""
