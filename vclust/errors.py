"""Errors that the command line turns into exit code 2 and one clear line."""


class InputError(ValueError):
    """Bad input or usage: the message is one line that says what was expected,
    what was received and how to fix it. Nothing stored has been changed."""


class StoreLockedError(InputError):
    """Another writer holds the store's lock."""
