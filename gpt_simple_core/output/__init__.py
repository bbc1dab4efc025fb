"""Output: ordered JSONL with a spool, and progress on stderr."""
