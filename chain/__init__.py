"""gradmesh chain package (built in a later issue)."""
