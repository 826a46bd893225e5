"""The gradmesh node, in layers (docs/architecture.md): errors.py and status.py
(leaves), engine (owns θ), outer (the outer step), mesh (peer-to-peer
transport), runtime (the async services), dashboard (the operator page),
sim (simulator, devnet) and cli.

Each layer imports only the layers below it; tests/unit/test_architecture.py
enforces the rule.
"""
