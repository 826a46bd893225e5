"""gradmesh validator package (built in a later issue)."""
