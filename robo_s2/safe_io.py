"""Files are data, never code: how robo_s2 reads weights and state files it did not just write.

* **Weights** (:func:`read_weights`) load through safetensors or ``torch.load(weights_only=True)``.
  A file that pickles Python objects beyond tensors is refused with one line, unless the *user*
  said on the command line that they trust it (``encoder.trust_weights=true``, see
  :func:`trusted_weights`). No field inside any file (a checkpoint's ``robo_s2.json``, a saved
  ``config.yaml``) can switch that on: :func:`strip_trust` removes such keys from stored configs.
* **Strict state dicts** (:func:`fit_state_dict`): every tensor the model has must come from the
  file with its shape; known wrapper prefixes (``module.``, ``encoder.``, ``model.``) are stripped
  on purpose; classifier / decoder keys are the only ones allowed to be left unused. Anything else
  is one error line naming the first missing, unexpected and shape-mismatched keys and the
  architecture the file looks like. Never a half-random encoder.
* **State files** (:func:`save_state` / :func:`load_state`): training state (optimizer, schedule,
  sampler, RNG states, ...) as one safetensors file, its tensors as tensors and everything else as
  JSON in the header: no pickle anywhere.

Truncated or corrupt files are one line naming the file and saying "re-save or delete it".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from robo_s2.core.io import atomic_file
from robo_s2.errors import UserError

log = logging.getLogger("robo_s2.weights")
T = TypeVar("T")

TRUST_FLAG = "encoder.trust_weights=true"
# wrappers whose prefix is stripped on purpose: DDP (module.), MAE-style and generic wrappers
STRIP_PREFIXES = ("module.", "encoder.", "model.")
# keys of a file that an encoder may leave unused: classifiers and pre-training decoders
UNUSED_OK = ("head.", "head_dist.", "fc.", "classifier.", "pre_logits.", "decoder", "mask_token")
STATE_FORMAT = "robo_s2 state v1"

_USER_TRUST = False


# ------------------------------------------------------------------------------------------------
# trust: the user's word on the command line, never a file's
def user_trusts_weights() -> bool:
    """Whether the user passed ``encoder.trust_weights=true`` (or is inside :func:`trusted_weights`)."""
    return _USER_TRUST


@contextlib.contextmanager
def trusted_weights(on: bool = True) -> Iterator[None]:
    """Inside this block weights files that need pickle are loaded (only for files you trust).

    The CLI enters it for ``encoder.trust_weights=true`` on the command line; Python callers say
    so in code. Loading such a file can run any code its author put in it.
    """
    global _USER_TRUST
    previous, _USER_TRUST = _USER_TRUST, bool(on)
    try:
        yield
    finally:
        _USER_TRUST = previous


def is_trust_key(key: Any) -> bool:
    """``trust_weights``, ``trust_checkpoint``, ``trust_remote_code``, ...: never taken from a file."""
    return isinstance(key, str) and key.lower().startswith("trust")


def strip_trust(cfg: Any, path: str = "") -> tuple[Any, list[str]]:
    """``cfg`` without any trust key at any depth, and the dotted paths of those that were truthy."""
    if isinstance(cfg, Mapping):
        out, found = {}, []
        for k, v in cfg.items():
            where = f"{path}.{k}" if path else str(k)
            if is_trust_key(k):
                if v not in (False, None, 0, "false", "False", ""):
                    found.append(where)
                continue
            out[k], inner = strip_trust(v, where)
            found += inner
        return out, found
    if isinstance(cfg, list | tuple):
        pairs = [strip_trust(v, f"{path}[{i}]") for i, v in enumerate(cfg)]
        return type(cfg)(v for v, _ in pairs), [w for _, f in pairs for w in f]
    return cfg, []


# ------------------------------------------------------------------------------------------------
# reading tensor files
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _looks_like_safetensors(p: Path) -> bool:
    if p.suffix == ".safetensors":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < p.stat().st_size


# the most parameters a model built from a file's config may have (fp32: 8 GiB); the biggest
# model here (ViT-L) has 0.3 G
MAX_MODEL_PARAMETERS = 2**31


def build_within_limits(build: Callable[[], T], what: str, limit: int = MAX_MODEL_PARAMETERS) -> T:
    """``build()`` (a module whose sizes came from a file), after building it once on the meta
    device (no memory) to count its parameters: a config declaring a model too big for any
    machine here is one line, not a MemoryError."""
    with torch.device("meta"):
        probe = build()
    n = sum(p.numel() for p in probe.parameters()) if isinstance(probe, torch.nn.Module) else 0
    if n > limit:
        raise UserError(
            f"{what} asks for a model of {n:,} parameters, more than the {limit:,} robo_s2 "
            "builds (8 GiB of fp32 weights): lower its sizes, or restore the file it came from"
        )
    return build()


def write_safetensors(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """``tensors`` as a safetensors file at ``path``, written whole or not at all (a crash
    mid-write never leaves a half file under the real name)."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def read_safetensors(path: str | Path, what: str = "file") -> dict[str, Tensor]:
    """All tensors of a safetensors file; a truncated or corrupt file is one UserError line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{what} {p} is truncated or corrupt ({_first_line(exc)}); re-save or delete it"
        ) from None


def read_safetensors_metadata(path: str | Path, what: str = "file") -> dict[str, str]:
    """The string metadata of a safetensors header (empty when it has none), without reading
    its tensors; a corrupt header is one UserError line."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{what} {p} is truncated or corrupt ({_first_line(exc)}); re-save or delete it"
        ) from None


def _pickle_globals(p: Path) -> list[str]:
    """The importable names a pickle stream refers to, read opcode by opcode (nothing runs)."""
    import io
    import pickletools

    data = p.read_bytes()
    if not data.startswith(b"\x80"):  # every torch / protocol >= 2 pickle starts with PROTO
        return []
    stream = io.BytesIO(data)
    names: list[str] = []
    strings: list[str] = []
    try:
        while stream.tell() < len(data):  # legacy torch files are several pickles in a row
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
            if data[stream.tell() : stream.tell() + 1] != b"\x80":
                break  # raw tensor bytes follow the pickles of a legacy file
    except Exception:  # noqa: BLE001 - truncated or not a pickle: the names read so far
        pass
    return names


def _unsafe_globals(p: Path) -> list[str]:
    """Globals a torch file needs beyond what ``weights_only=True`` allows (empty: none, or the
    file is not a pickle at all)."""
    import zipfile

    if zipfile.is_zipfile(p):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(p))
        except Exception:  # noqa: BLE001 - a damaged archive
            return []
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - private API; then every global counts
        allowed = set()
    allowed |= {f"{g.__module__}.{g.__qualname__}" for g in (argparse.Namespace,)}
    names = _pickle_globals(p)
    return list(dict.fromkeys(n for n in names if n not in allowed))


def read_weights(path: str | Path, what: str = "weights file") -> Any:
    """A weights file's content: safetensors, or a torch file read with ``weights_only=True``.

    Files that need pickle are refused with one line naming :data:`TRUST_FLAG`, unless the user
    passed it; corrupt files are one line too. The result is whatever the file holds (a state
    dict, or a dict around one).
    """
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    if _looks_like_safetensors(p):
        return read_safetensors(p, what)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if user_trusts_weights():  # only the user's own command-line flag, never a file's
                return torch.load(p, map_location="cpu", weights_only=False)
            # MAE-style training checkpoints also store their argparse.Namespace of arguments
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on non-checkpoints
        names = _unsafe_globals(p) if isinstance(exc, pickle.UnpicklingError) else []
        if names:
            raise UserError(
                f"{what} {p} pickles Python objects beyond tensors ({', '.join(names[:3])}), "
                "and loading it could run "
                "code from the file, so it is refused; re-save it as safetensors or a plain state "
                f"dict, or, only if you trust its source, pass {TRUST_FLAG} on the command line"
            ) from None
        raise UserError(
            f"{what} {p} is not a torch checkpoint or safetensors file (corrupt, truncated or "
            f"another format: {type(exc).__name__}); re-save or delete it"
        ) from None


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def state_dict_in(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The state dict inside a loaded weights file: the whole file or its ``state_dict`` /
    ``model`` / ``model_state_dict`` entry."""
    if is_state_dict(obj) and obj:
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if is_state_dict(obj.get(key)) and obj[key]:
                return dict(obj[key])
    found = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise UserError(
        f"weights file {path} holds no state dict of tensors (found {found}); save "
        "model.state_dict() itself, or under 'model' or 'state_dict'"
    )


# ------------------------------------------------------------------------------------------------
# strict state dicts
def name_list(keys: list[str], limit: int = 8) -> str:
    """``[a, b, ... +n more]``: the first keys of a list, for one-line messages."""
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... +{len(keys) - limit} more' if len(keys) > limit else ''}]"


def unused_ok(key: str) -> bool:
    return key.startswith(UNUSED_OK)


def strip_known_prefixes(
    state: Mapping[str, Tensor], expected: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Strip wrapper prefixes (:data:`STRIP_PREFIXES`) that every kept key carries.

    A prefix is stripped when the model (``expected``, if given) has no key of its own with it and
    every key of the file either carries it or is a classifier/decoder key (those are dropped).
    Returns the state and the prefixes stripped, in order.
    """
    state, stripped = dict(state), []
    own = list(expected or ())
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if any(k.startswith(p) for k in own):
                continue
            keep = [k for k in state if k.startswith(p)]
            if keep and all(k.startswith(p) or unused_ok(k) for k in state):
                state = {k[len(p) :]: state[k] for k in keep}
                stripped.append(p)
                changed = True
    return state, stripped


def describe_vit(state: Mapping[str, Tensor]) -> str | None:
    """What ViT a state dict looks like (``width 384, depth 12, patch 16 (vit_small_...)``)."""
    w = state.get("patch_embed.proj.weight")
    if w is None or w.dim() != 4:
        return None
    width, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    names = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}
    depths = {192: 12, 384: 12, 768: 12, 1024: 24, 1280: 32}
    timm_name = (
        f" (timm: vit_{names[width]}_patch{patch}_224)"
        if width in names and depths[width] == depth
        else ""
    )
    return f"a ViT of width {width}, depth {depth}, patch {patch}{timm_name}"


def fit_state_dict(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    source: str,
    target: str,
    adapt: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    error_prefix: str | None = None,
    fix: str | None = None,
    exact: bool = False,
) -> dict[str, Tensor]:
    """``state`` made to fit a model whose ``state_dict()`` is ``expected``, or a UserError.

    Every expected tensor must be present with its shape (after ``adapt``, e.g. resampling a
    position table); known prefixes are stripped; classifier/decoder keys may be left unused;
    anything else is an error naming the first offending keys. Logs how many tensors it loads.
    ``exact``: no prefix stripping and no unused keys either (files robo_s2 wrote itself).
    """
    state, stripped = (dict(state), []) if exact else strip_known_prefixes(state, expected)
    unused = [] if exact else [k for k in state if k not in expected and unused_ok(k)]
    state = {k: v for k, v in state.items() if k not in unused}
    if adapt is not None:
        state = adapt(state)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {name_list(missing, 4)}")
        if unexpected:
            parts.append(f"unexpected keys {name_list(unexpected, 4)}")
        if shapes:
            more = f" (+{len(shapes) - 2} more)" if len(shapes) > 2 else ""
            parts.append(f"shape mismatches {'; '.join(shapes[:2])}{more}")
        looks = describe_vit(state)
        hint = f"; the file looks like {looks}" if looks else ""
        where = f" (after stripping {', '.join(stripped)})" if stripped else ""
        head = error_prefix or f"{source} does not fit {target}"
        fix = fix or f"use weights saved from {target} (every tensor, right shapes)"
        raise UserError(f"{head}{where}: {'; '.join(parts)}{hint}; {fix}")
    note = f"; stripped prefix {', '.join(stripped)}" if stripped else ""
    note += f"; left unused {len(unused)} classifier/decoder tensors" if unused else ""
    log.info(f"loaded {len(expected)}/{len(expected)} tensors of {target} from {source}{note}")
    return {k: state[k] for k in expected}


# ------------------------------------------------------------------------------------------------
# state files: safetensors, tensors as tensors, the rest as JSON in the header
def _encode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = str(len(tensors))
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple | torch.Size):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a state file (tensors and JSON only)")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return tensors[value].numpy()
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__items__":
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def save_state(path: str | Path, state: Any) -> Path:
    """Write ``state`` (nested dicts/lists/tuples of tensors, arrays and JSON values) atomically."""
    from safetensors.torch import save_file

    out = Path(path)
    tensors: dict[str, Tensor] = {}
    tree = _encode(state, tensors)
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "state": json.dumps(tree)})
    return out


def load_state(path: str | Path, what: str = "state file") -> Any:
    """What :func:`save_state` wrote; a truncated, corrupt or foreign file is one UserError line."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{what} {p} is truncated or corrupt ({_first_line(exc)}); re-save or delete it"
        ) from None
    if meta.get("format") != STATE_FORMAT or "state" not in meta:
        raise UserError(f"{what} {p} was not written by robo_s2 ({STATE_FORMAT}); delete it")
    try:
        return _decode(json.loads(meta["state"]), tensors)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(
            f"{what} {p} is corrupt ({type(exc).__name__}: {_first_line(exc)}); re-save or delete it"
        ) from None
