"""User-facing errors: printed as one short message by the CLI, never as a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing artefact, bad data).

    The message must say what is wrong and name the fix (a config key, a command).
    """
