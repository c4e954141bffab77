"""The exit codes, and the errors the command line turns into one clear line.

    0  done
    1  an internal fault: a bug in vclust; its traceback is printed
    2  bad input or usage: one line on stderr saying what was expected, what was received and
       how to fix it; nothing stored has been changed
    3  the nightly job crossed a drift threshold
    4  an environment fault: the disk is full, a path is read-only or not writable, the Dask
       scheduler cannot be reached or was lost mid-run; one line saying what failed, what was
       kept and what to do. Every write is staged and renamed into place (or rolled back by the
       next writer), so what was stored before the fault is intact.

``--debug`` prints the traceback of exits 2 and 4 as well. docs/faults.md lists each fault tried.
"""

import errno

EXIT_OK = 0  # done
EXIT_FAULT = 1  # an internal fault (with its traceback)
EXIT_INPUT = 2  # bad input or usage: one line on stderr, nothing stored changed
EXIT_DRIFT = 3  # the nightly job crossed a drift threshold
EXIT_ENVIRONMENT = 4  # disk full, read-only, scheduler unreachable or lost: one line, data kept


class InputError(ValueError):
    """Bad input or usage: the message is one line that says what was expected,
    what was received and how to fix it. Nothing stored has been changed."""


class StoreLockedError(InputError):
    """Another writer holds the store's lock."""


class EnvironmentFault(RuntimeError):
    """The machine, not the input: disk full, read-only, the scheduler unreachable or lost.
    The message says what failed and what to do; the command line adds what was kept (``kept``
    when given, else what the command's writes leave)."""

    def __init__(self, message: str, kept: str | None = None):
        super().__init__(message)
        self.kept = kept


# errno values that are the environment's doing, with what the user should do about them
DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
             errno.EFBIG: "the file size limit was reached"}
NOT_WRITABLE = {errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
