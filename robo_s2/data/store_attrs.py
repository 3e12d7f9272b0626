"""The attributes of a robo_s2 demo store that robo_s2 itself reads, as a pydantic model.

A store's attributes (root ``zarr.json`` / ``.zattrs``) are free-form JSON: a user or an importer
may add anything. The keys below are the ones robo_s2 reads back (train, eval, export, resumed
collect and import); each must have the type robo_s2 writes, checked strictly (no coercion) when
the store is read and before an update is written. Other keys pass untouched.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from robo_s2.core.schema import validated

Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Names = list[str]


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class EnvAttrs(_Open):
    """The env the demos were recorded in (its constructor's arguments, plus its id)."""

    id: str | None = None
    entry_point: str | None = None
    image_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    cameras: Names | None = None
    control_hz: Rate | None = None


Count = Annotated[int, Field(ge=0, le=2**62)]


class CollectProgress(_Open):
    """Where a ``robo-s2 collect`` into this store stopped (its resume point)."""

    # optional, but never null: the reader uses a missing key's default, not a null
    seed: int = 0
    next_attempt: Count = 0
    attempts: Count = 0
    discarded: Count = 0
    placement: str = "random"
    cells: Count | None = None  # stratified placement: cells per axis


class ImportProgress(_Open):
    """Where a ``robo-s2 import`` into this store stopped (its resume point)."""

    next_index: Count = 0
    n_source: Count | None = None
    imported: Names = []
    skipped: Names = []


class StoreAttrs(_Open):
    env: EnvAttrs | None = None
    control_hz: Rate | None = None
    task: str | None = None
    episode_tasks: list[Names] | None = None
    cameras: Names | None = None
    image_keys: dict[str, str] | None = None
    action_semantics: Names | None = None
    proprio_semantics: Names | None = None
    state_semantics: Names | None = None
    source: str | None = None
    created: str | None = None
    robo_s2_version: str | None = None
    collect: dict[str, Any] | None = None
    collect_progress: CollectProgress | None = None
    import_: dict[str, Any] | None = Field(default=None, alias="import")
    import_progress: ImportProgress | None = None
    robomimic: dict[str, Any] | None = None
    lerobot: dict[str, Any] | None = None
    diffusion_policy: dict[str, Any] | None = None


def check_store_attrs(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """``attrs`` unchanged if robo_s2's keys have their types, else one UserError line."""
    validated(
        StoreAttrs,
        attrs,
        f"{where}: a store attribute is corrupt",
        "fix or delete it in the store's zarr.json (.zattrs for a zarr v2 store)",
    )
    return attrs
