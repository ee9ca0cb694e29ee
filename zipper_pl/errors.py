"""User-facing errors: printed as one short message by the CLI, never as a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing artefact, bad data).

    The message must say what is wrong and name the fix (a config key, a command).
    """


class Terminated(KeyboardInterrupt):
    """Training stopped by SIGTERM (a scheduler's preemption or time limit, ``timeout``, ``kill``).

    Lightning ends ``fit`` with ``SIGTERMException``, a ``SystemExit`` without a code: the shell
    (and make, going on to the next stage) would read success. The CLI exits 143 instead.
    """
