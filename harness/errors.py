"""Errors that end a run, each with its own exit code (documented in README.md)."""

from __future__ import annotations

# Exit codes of the `buddylab` command.  Distinct, so CI can tell a broken
# set-up from a kernel that disagrees with the model.
EXIT_OK = 0
EXIT_CHECKS_FAILED = 1
EXIT_USAGE = 2
EXIT_SETUP = 3
EXIT_GUEST_TIMEOUT = 4
EXIT_GUEST_CRASHED = 5
EXIT_BAD_RECORDS = 6
# (7 and 8 are check-module's BUILD-FAILED and LOAD-FAILED, experiments/check_module.py.)
# No verdict: background kernel work touched the allocator in every attempt's
# window, so a miss of the model cannot be told from the disturbance (DISTURBED).
EXIT_DISTURBED = 9


class BuddylabError(Exception):
    """Base class: a run that cannot go on.  `exit_code` says why."""

    exit_code = EXIT_SETUP
    # Said before the message on stderr, where the message alone is not clear.
    headline = ""


class UsageError(BuddylabError):
    """Arguments out of range or contradicting each other."""

    exit_code = EXIT_USAGE


class SetupError(BuddylabError):
    """A missing tool, a bad download, a module the kernel would refuse."""

    exit_code = EXIT_SETUP


class GuestTimeout(BuddylabError):
    """The guest did not reach a stage before its deadline."""

    exit_code = EXIT_GUEST_TIMEOUT


class GuestConnectionLost(GuestTimeout):
    """The SSH connection dropped while a command ran (its dropbear killed, QEMU gone).

    The message carries the tail of the guest's serial console, where the
    kernel says why (an OOM kill, a panic), when the harness has it."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- serial log tail ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class GuestCrashed(BuddylabError):
    """The guest kernel panicked or oopsed (seen on its serial console)."""

    exit_code = EXIT_GUEST_CRASHED

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class GuestCommandError(BuddylabError):
    """A command in the guest failed where it had to succeed."""

    exit_code = EXIT_SETUP


class RecordError(BuddylabError, ValueError):
    """Output that does not parse: the module's records, /proc files, a trace, a capture.

    Also records that parse but do not fit together (a dump whose blocks lie
    in no zone it lists, a log with fewer operations than commands sent).
    Its own exit code, as kunit_tool tells "could not parse the results"
    apart from "a test failed".  The parsers' own errors subclass it.
    """

    exit_code = EXIT_BAD_RECORDS
    headline = "output that does not parse"

    def within(self, where: str) -> "RecordError":
        """The same error, its message prefixed with where the text came from."""
        return RecordError(f"{where}: {self}")


class ModelStopped(BuddylabError):
    """The page-for-page model could not follow what the kernel did.

    An operation the kernel could not have performed on the model's state
    (pagemodel.ModelError), or a step that depends on state no dump shows
    (pagemodel.Unknowable), where no experiment catches it.  The model
    disagrees with the kernel, so it is a failed check: exit code 1, with a
    message of its own (`headline`).
    """

    exit_code = EXIT_CHECKS_FAILED
    headline = "the 5.10 model could not follow the kernel"
