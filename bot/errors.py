"""The one base of the errors a person can act on.

Each says what is wrong and what to do; `chimein` prints it as a one-line `error: ...` (a
config error lists every problem) and exits with status 2, never with a traceback. Anything
else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class ChimeinError(Exception):
    """An error whose message is for the user: what is wrong and what to do."""
