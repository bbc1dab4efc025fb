"""One module per tool; each runs in its own subprocess and prints one JSON line."""
