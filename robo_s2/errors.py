"""The exception type that the CLI turns into a single clear error line, and the subtypes that
callers branch on (by type, never by message text)."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do about it.

    The CLI prints it as one line (``error: <message>``) and exits non-zero, without a traceback.
    """


class ModelArgsRejected(UserError):
    """A model factory refused the keyword arguments it was given (e.g. ``img_size`` for a timm
    model that has no such option)."""


class ImportFailure(UserError):
    """An import's error whose message already says what became of its ``out`` store (nothing
    written, or the episodes kept for a resume)."""
