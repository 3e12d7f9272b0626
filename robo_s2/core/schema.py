"""Schemas at the doors: a document read from a file is checked against a pydantic model, and a
document that does not fit is one :class:`UserError` line naming the file, the field and what it
must be (never a TypeError or KeyError from deep inside the code that reads it)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from robo_s2.errors import UserError

M = TypeVar("M", bound=BaseModel)


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_problem(exc: ValidationError) -> str:
    """``field.path: what it must be (got ...)`` for the first error pydantic found."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "the document"
    return f"{loc}: {err['msg']} (got {short_repr(err.get('input'))})".replace("\n", " ")


def validated(model: type[M], data: Any, where: str, fix: str) -> M:
    """``data`` as ``model``; else one line: ``<where>: <field>: <problem>; <fix>``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {first_problem(exc)}; {fix}") from None
    except RecursionError:
        raise UserError(f"{where} nests deeper than any file robo-s2 writes; {fix}") from None
