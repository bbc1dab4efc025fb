"""gpt-simple-bigram: a character-bigram backend for gpt-simple (the plugin template)."""

__version__ = "0.1.0"
