"""Exit statuses of the ``gpt-simple`` command (the CLI maps run results onto them).

Wrapper scripts rely on them (docs/cli.md): requeue on 143 and 138, never on 2.
"""

EXIT_OK = 0
EXIT_RECORD_ERRORS = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 70
EXIT_OUTPUT = 74  # the output could not be written (EX_IOERR): a valid prefix is kept
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_USR1 = 138
