"""Who is acting: the one rule behind a patch's `author`, a version's `registered_by` and an alias move's `who`."""

from __future__ import annotations

import getpass
import os

USER_ENV = "STEERPATCH_USER"
UNKNOWN_USER = "unknown"


def current_user(*, default: str | None = None) -> str:
    """The name steerpatch records for whoever runs it. The first of these that is set wins:

    1. `STEERPATCH_USER` (CI jobs, shared service accounts, tests),
    2. `default`, when the caller acts under a fixed name (the demo authors its patch as `steerpatch-demo`),
    3. the login name (`getpass.getuser()`: `LOGNAME`, `USER`, `LNAME`, `USERNAME`, then the password database),
    4. `unknown`, when the system cannot say (a container whose uid has no passwd entry).

    Example:
        >>> current_user()  # with STEERPATCH_USER=grace  # doctest: +SKIP
        'grace'
    """
    override = os.environ.get(USER_ENV, "").strip()
    if override:
        return override
    if default:
        return default
    try:
        return getpass.getuser() or UNKNOWN_USER
    except (KeyError, OSError):
        return UNKNOWN_USER
