"""``robo-s2 encoders``: parameters, GFLOPs per frame, feature width and frames/s of encoders.

Prints one table row per encoder and writes ``encoders.json`` and ``encoders.md`` in the run
directory. Encoder configs are read straight from ``configs/encoder/<name>.yaml`` (no Hydra
compose).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.device import resolve_device
from robo_s2.encoders.profile import (
    EncoderProfile,
    count_gflops,
    format_table,
    profile_encoder,
)
from robo_s2.encoders.registry import create_encoder, random_weights, resolve_encoder_config
from robo_s2.errors import UserError


def _run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def _as_list(value: Any, key: str) -> list:
    if OmegaConf.is_list(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str | int):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError(f"{key} must be a non-empty list, e.g. {key}=[vit_t,vit_t_s2]")
    return value


MATCH_TOLERANCE = 0.05  # a config's compute_matched_to holds when GFLOPs agree within 5 %


def compute_matched_notes(
    profiles: list[EncoderProfile], overrides: dict[str, Any], use_random: bool
) -> list[str]:
    """One line per profiled config with ``compute_matched_to: <ref>``: both GFLOPs (measured; the
    reference is counted here if it was not profiled) and whether they agree within 5 %."""
    measured = {p.name: p.gflops for p in profiles}
    notes = []
    for p in profiles:
        ref = resolve_encoder_config(p.name, **overrides.get(p.name, {})).get("compute_matched_to")
        if not ref:
            continue
        ref = to_plain(ref)
        # a config name, or one with options, e.g. {name: vit_s, image_size: 64}
        if isinstance(ref, Mapping):
            built: str | dict[str, Any] = dict(ref)
            ref = ", ".join(f"{k}={v}" for k, v in ref.items())
        else:
            ref = built = str(ref)
        if ref not in measured:
            # GFLOPs do not depend on the weights (a reference may need a file this run lacks)
            with (
                random_weights()
                if use_random or isinstance(built, dict)
                else contextlib.nullcontext()
            ):
                measured[ref] = count_gflops(create_encoder(built).eval())
        rel = p.gflops / measured[ref] - 1.0
        verdict = "compute-matched to" if abs(rel) <= MATCH_TOLERANCE else "NOT compute-matched to"
        notes.append(
            f"note: {p.name} ({p.gflops:.2f} GFLOPs) is {verdict} {ref} "
            f"({measured[ref]:.2f} GFLOPs, {rel:+.1%}; tolerance {MATCH_TOLERANCE:.0%})"
        )
    return notes


def run(cfg: DictConfig) -> list[EncoderProfile]:
    names = [str(n) for n in _as_list(cfg.names, "names")]
    batch_sizes = [int(b) for b in _as_list(cfg.batch_sizes, "batch_sizes")]
    if any(b < 1 for b in batch_sizes):
        raise UserError(f"batch_sizes must be >= 1, got {batch_sizes}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(str(cfg.device))
    overrides = cfg.overrides or {}
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UserError(
            "overrides must map encoder names to options, e.g. overrides.mvp_b.weights=..."
        )
    extra = sorted(set(overrides) - set(names))
    if extra:
        raise UserError(f"overrides.{extra[0]} is given but '{extra[0]}' is not in names={names}")
    for name in names:  # every name resolves before any work starts
        resolve_encoder_config(name, **overrides.get(name, {}))
    use_random = bool(cfg.random_weights)
    start = time.perf_counter()
    profiles: list[EncoderProfile] = []
    with tqdm(names, desc="encoders", unit="enc", dynamic_ncols=True, delay=1.0) as bar:
        for name in bar:
            bar.set_postfix_str(name, refresh=False)
            with random_weights() if use_random else contextlib.nullcontext():
                encoder = create_encoder(name, **overrides.get(name, {}))
            profiles.append(
                profile_encoder(
                    encoder,
                    batch_sizes,
                    device,
                    min_time=float(cfg.min_time),
                    name=name,
                    precision=str(cfg.precision),
                )
            )
            del encoder

    table = format_table(profiles)
    matched = compute_matched_notes(profiles, overrides, use_random)
    table = "\n".join([table, *matched])
    print(table)
    out = _run_dir()
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "device": str(device),
        "precision": str(cfg.precision),
        "threads": torch.get_num_threads(),
        "random_weights": use_random,
        "batch_sizes": batch_sizes,
        "encoders": [p.to_dict() for p in profiles],
    }
    (out / "encoders.json").write_text(json.dumps(record, indent=2) + "\n")
    note = (
        f"Device: {device} (precision {cfg.precision}, resolved per batch size "
        f"as shown beside each frames/s; {torch.get_num_threads()} CPU threads). "
        "GFLOPs counted with torch FlopCounterMode (2 per multiply-accumulate); GMACs = GFLOPs / 2 "
        "(the S² paper's #FLOPs).\n"
    )
    (out / "encoders.md").write_text(f"# Encoders\n\n{note}\n{table}\n")
    print(
        f"encoders: {len(profiles)} encoder(s) profiled on {device} in "
        f"{time.perf_counter() - start:.1f} s; table in {out / 'encoders.md'}"
    )
    return profiles
