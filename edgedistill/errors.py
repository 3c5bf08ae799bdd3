"""The exceptions users see. The CLI prints them without a traceback (unless -v) and exits
with their ``exit_code``: 1 a gate failed, 2 bad input (anything the user can fix), 3 an internal
error. Anything else escaping a command is a bug: the CLI writes its traceback to a log and exits 3
(see :mod:`edgedistill.crashlog`)."""

from __future__ import annotations

import errno

# OSErrors the user fixes (a full disk, a read-only or forbidden folder): bad input, exit 2
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


class EdgeDistillError(Exception):
    """A problem the user can fix: bad input, a missing artifact, an unreachable endpoint."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class ConfigError(EdgeDistillError):
    """A recipe, target or --set override that does not validate."""


class DataError(EdgeDistillError):
    """A data file that is missing or malformed."""


class StageMissing(EdgeDistillError):
    """A stage needs an artifact an earlier stage has not produced."""


class NotAvailable(EdgeDistillError):
    """A capability this version does not ship yet, or a runtime that is not installed."""


class EndpointError(EdgeDistillError):
    """A teacher endpoint that cannot be reached or refuses the credentials."""


class ArtifactError(EdgeDistillError):
    """An artifact that failed its own check (corrupt file, parity failure)."""


class GateFailed(EdgeDistillError):
    """One or more artifacts missed the recipe's gates, or too few answers were accepted."""

    exit_code = 1


class RunBusy(EdgeDistillError):
    """Another edgedistill command holds the run directory's lock (RUN/.lock)."""


class InternalError(EdgeDistillError):
    """A bug: an exception no stage expected (an exporter crashing, say). ``log`` is the file that
    holds the traceback; the CLI prints one line naming it and exits 3."""

    exit_code = 3

    def __init__(self, message: str, *, log: object = None, stage: str | None = None,
                 hint: str | None = None):
        super().__init__(message, hint=hint)
        self.log = log
        self.stage = stage
