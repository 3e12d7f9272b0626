"""``robo-s2 compare``: rows of finished experiments in one like-for-like table."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robo_s2.core.config import to_plain
from robo_s2.core.io import refuse_output_over_input
from robo_s2.errors import UserError
from robo_s2.experiments.compare import CompareResult, run_compare


def run(cfg: DictConfig) -> CompareResult:
    from hydra.core.hydra_config import HydraConfig

    if OmegaConf.is_missing(cfg, "results"):
        raise UserError(
            "compare needs results=[...]: the results.json files (or run directories) of finished "
            "experiments, e.g. results=[docs/results/table8_cpu,docs/results/table8_cpu_resnet_lr]"
        )
    results = to_plain(cfg.results)
    rows = to_plain(cfg.rows)
    if isinstance(results, str):
        results = [results]
    if isinstance(rows, str):
        rows = [rows]
    out = Path(HydraConfig.get().runtime.output_dir)
    sources = [Path(str(p)) for p in results]  # a results.json or the directory holding it
    refuse_output_over_input(
        out, [p.parent if p.suffix == ".json" else p for p in sources], "robo-s2 compare",
        nested=False,
    )  # fmt: skip
    result = run_compare(
        [str(p) for p in results],
        out,
        rows=[str(r) for r in rows],
        name=str(cfg.name),
        title=str(cfg.title),
        vary=[str(v) for v in to_plain(cfg.vary)],
    )
    print()
    print(result.table_path.read_text().strip())
    print()
    print(result.summary())
    return result
