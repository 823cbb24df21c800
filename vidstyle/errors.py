"""The one exception type whose message is meant for the user."""


class VidstyleError(Exception):
    """A problem with the user's input or environment, reported as one line, no traceback."""
