"""robo_s2.core.io: an interrupted write leaves the old file and no temporary behind."""

import os

import pytest

from robo_s2.core.io import atomic_file, replace_path, write_json_atomic


def test_atomic_file_replaces_only_when_the_write_finishes(tmp_path):
    out = tmp_path / "sub" / "eval_info.json"
    write_json_atomic(out, {"pc_success": 50.0})
    with pytest.raises(RuntimeError), atomic_file(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_text('{"pc_success": ')  # half written, then the writer dies
        raise RuntimeError("killed")
    assert out.read_text() == '{\n  "pc_success": 50.0\n}\n'
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval_info.json"]


def test_replace_path_swaps_directories_and_puts_the_old_one_back_on_failure(tmp_path, monkeypatch):
    out, new = tmp_path / "best", tmp_path / ".best.tmp"
    out.mkdir(), new.mkdir()
    (out / "w").write_text("old"), (new / "w").write_text("new")
    replace_path(new, out)
    assert (out / "w").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["best"]

    newer = tmp_path / ".best.tmp2"
    newer.mkdir()
    real_rename = os.rename

    def fail_second(src, dst):
        if str(src) == str(newer):
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_second)
    with pytest.raises(OSError, match="disk full"):
        replace_path(newer, out)
    assert (out / "w").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == [".best.tmp2", "best"]
