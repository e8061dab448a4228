"""The one exception type users see as a single line on stderr (no traceback)."""


class VidrtError(Exception):
    """A problem with the user's input or environment, stated in one line naming the key or path."""
