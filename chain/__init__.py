"""The chain side of gradmesh: the GradMeshNetwork contract and how to reach it.

`chain.client.ChainClient` is the interface the rest of the project uses;
`chain.web3client` (the only module, with `chain.launch` and `chain.deploy`,
that imports web3) and `chain.memory` implement it. Errors derive from
`chain.errors.ChainError`.
"""
