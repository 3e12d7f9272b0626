"""Demonstrations in foreign formats: robomimic HDF5, diffusion_policy zarr and LeRobotDataset, both
ways.

- :func:`import_robomimic` / :func:`export_robomimic` (:mod:`robo_s2.data.interop.robomimic_hdf5`)
- :func:`import_dp` / :func:`export_dp` (:mod:`robo_s2.data.interop.dp_zarr`)
- :func:`import_lerobot` / :func:`export_lerobot` (:mod:`robo_s2.data.interop.lerobot`)
- :func:`is_foreign` / :func:`require_native_env`: whether a store's demos come from an env other
  than robo_s2's own MuJoCo cube picking (such stores train, but cannot be evaluated here).

Imports stream the source episode by episode into a :class:`~robo_s2.data.store.DemoStore` and commit,
with every episode, the index of the next source episode (``attrs["import_progress"]``), so an
interrupted import resumes where it stopped when the same command is run again. Failure policy:

- a failed *first* episode (or an interruption before it) leaves no store behind;
- a failure at a later episode keeps the store with every episode committed before it; the error
  says so, and re-running the same command (after fixing the source, or with ``skip_bad=True``)
  continues from the failed episode;
- exports are written into a hidden temporary file or directory beside ``out`` and renamed into
  place at the end, so ``out`` never holds a half-written export.
"""

from typing import Any

from robo_s2.data.interop.base import (
    NATIVE_ENV_ID,
    ExportResult,
    ImportResult,
    is_foreign,
    require_native_env,
)

__all__ = [
    "NATIVE_ENV_ID",
    "ExportResult",
    "ImportResult",
    "export_dp",
    "export_lerobot",
    "export_robomimic",
    "import_dp",
    "import_lerobot",
    "import_robomimic",
    "is_foreign",
    "require_native_env",
]


# the format modules load lazily (h5py, zarr, imagecodecs; pyarrow and av for lerobot)
def __getattr__(name: str) -> Any:
    from robo_s2.data.interop.base import FORMATS

    verb, _, fmt = name.partition("_")
    if verb in ("import", "export") and fmt in FORMATS:
        return FORMATS[fmt].function(name)
    raise AttributeError(f"module 'robo_s2.data.interop' has no attribute {name!r}")
