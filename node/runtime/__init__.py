"""The async services: the window loop (core.py), miner, gather, catch-up,
chain view, signed records and checkpoints, the run spec and keys.

It drives an `Engine` and never touches parameters itself; it may import
engine, outer, mesh, chain and protocol, never validator, sim, cli or dashboard.
"""
