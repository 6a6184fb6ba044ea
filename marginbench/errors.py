"""The one exception type users see as a one-line message (the CLI prints it, exits 2)."""


class MarginbenchError(Exception):
    """A problem the user can fix: bad config, missing file, unknown model.

    The message must say what is wrong and how to fix it, on one line.
    """
