"""Input records: the schema, strict structuring, and JSONL parsing."""
