"""Planning: records grouped by model load, checked before anything loads."""
