"""``python -m gpt_simple_bigram.train TEXT_FILE OUT_DIR``: build a bigram checkpoint."""

from gpt_simple_bigram.model import main

if __name__ == "__main__":
    main()
