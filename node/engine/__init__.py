"""The training engine: the only code that holds θ.

Owns the model families, tokenizer, data and shards, the inner AdamW trainer,
the scratch evaluator and local checkpoints, behind the `Engine` seam
(base.py; `LocalEngine` in local.py, `ShardedEngine` in sharded.py with its ranks
driven from ranks.py). Imports only `node.outer`, `protocol` and `node.errors`; it
must never touch the network, the chain or the clock — the one connection it makes
is its own process group between the ranks of one miner (loopback for gloo).
"""
