"""The gradmesh miner: model, data, inner and outer optimizers, swarm runtime, CLI."""
