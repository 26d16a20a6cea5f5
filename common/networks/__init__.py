"""networks of the collection (see common/__init__.py)."""
