"""The ``gpt-simple`` command line: one module per command."""
