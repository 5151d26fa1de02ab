"""Content scanning: the end-of-data hook and what it may decide."""
