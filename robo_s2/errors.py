"""The one exception type that the CLI turns into a single clear error line."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do about it.

    The CLI prints it as one line (``error: <message>``) and exits non-zero, without a traceback.
    """
