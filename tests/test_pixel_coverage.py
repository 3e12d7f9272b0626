"""benchmarks/pixel_coverage.py: the cube's pixels in the front camera, by segmentation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from robo_s2.paths import env_config

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "pixel_coverage.py"


@pytest.fixture(scope="module")
def pc():
    spec = importlib.util.spec_from_file_location("pixel_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cube_pixels_scale_with_image_area_and_cube_face(pc):
    big = pc.coverage(env_config("cube_pick"), sizes=(56, 112, 224), n=0)
    small = pc.coverage(env_config("cube_pick_small"), sizes=(56, 112, 224), n=0)
    assert [p[3] for p in big["placements"]][-1] == "centre"
    centre = {s: int(v[-1]) for s, v in big["pixels"].items()}
    assert all(v > 0 for v in centre.values()), centre
    # four times the pixels per doubling of the side (area), within aliasing
    assert 3.0 < centre[112] / centre[56] < 5.5 and 3.5 < centre[224] / centre[112] < 4.5
    # a cube of half the edge shows about a quarter of the pixels (2.25x wider region: corners vary)
    ratio = small["pixels"][224][-1] / centre[224]
    assert 0.15 < ratio < 0.35, ratio
    # every corner and the centre of both regions are seen, away from the image border
    for cov in (big, small):
        assert np.all(cov["pixels"][224] > 0) and np.all(cov["edge_margin"][224] > 5)


def test_edge_margin(pc):
    mask = np.zeros((10, 10), bool)
    assert pc.edge_margin(mask) == -1
    mask[2:4, 5:8] = True
    assert pc.edge_margin(mask) == 2
    mask[9, 0] = True
    assert pc.edge_margin(mask) == 0


def test_main_prints_a_row_per_size(pc, capsys, tmp_path):
    import imageio.v3 as iio

    out, png = tmp_path / "cov.json", tmp_path / "montage.png"
    pc.main(["--env", "cube_pick", "--sizes", "28", "56", "--n", "2", "--json", str(out),
             "--montage", str(png)])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("cube_pick") and "28²" in lines[1] and "56²" in lines[2]
    assert out.is_file() and iio.imread(png).shape == (56, 112, 3)
