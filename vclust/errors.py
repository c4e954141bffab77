"""Errors that the command line turns into exit code 2 and one clear line, and the exit codes."""

EXIT_OK = 0  # done
EXIT_FAULT = 1  # an internal fault (with its traceback)
EXIT_INPUT = 2  # bad input or usage: one line on stderr, nothing stored changed
EXIT_DRIFT = 3  # the nightly job crossed a drift threshold


class InputError(ValueError):
    """Bad input or usage: the message is one line that says what was expected,
    what was received and how to fix it. Nothing stored has been changed."""


class StoreLockedError(InputError):
    """Another writer holds the store's lock."""
