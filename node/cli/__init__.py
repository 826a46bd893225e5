"""The `gradmesh` command line: main.py registers one module per command group;
common.py holds the shared flags (each declared once with its GRADMESH_*
fallback) and builders.

May import anything; nothing else imports it. Every package's root error is
answered as `gradmesh: error: ...` with exit 2, never a traceback.
"""
