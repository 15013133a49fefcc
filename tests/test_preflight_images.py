"""Preflight of the ``images`` section: sources' files, image roots, and a decoded sample.

.venv/bin/python -m pytest -q tests/test_preflight_images.py
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from flywheel.cli import main
from flywheel.core.spec import load_spec
from flywheel.preflight import preflight
from tests.conftest import write_spec
from tests.data.images.conftest import encode, picture


def test_a_missing_image_source_is_one_clear_error(tmp_path: Path, capsys) -> None:
    path = write_spec(
        tmp_path,
        """
        images:
          sources:
            - {name: photos, kind: webdataset, path: shards/photos-*.tar}
        """,
    )
    [problem] = preflight(load_spec(path))
    assert problem.level == "error" and problem.key == "images.sources[0].path"
    assert "source 'photos': no input files match 'shards/photos-*.tar'" in problem.message
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("error: ") == 1 and "error: images.sources[0].path: source 'photos'" in out


def test_image_samples_are_decoded_and_bad_files_named(tmp_path: Path) -> None:
    pl.DataFrame(
        {"image": [encode(picture(1)), b"junk"], "text": ["a garden", "bad bytes"]}
    ).write_parquet(tmp_path / "mixed.parquet")
    pl.DataFrame({"image": [b"junk"], "text": ["junk"]}).write_parquet(tmp_path / "bad.parquet")
    pl.DataFrame({"img": [encode(picture(2))]}).write_parquet(tmp_path / "no_column.parquet")
    pl.DataFrame({"image": ["a.png"], "text": ["by path"]}).write_parquet(tmp_path / "refs.parquet")
    path = write_spec(
        tmp_path,
        """
        images:
          sources:
            - {name: mixed, kind: image_parquet, path: mixed.parquet}
            - {name: bad, kind: image_parquet, path: bad.parquet}
            - {name: nocol, kind: image_parquet, path: no_column.parquet}
            - {name: refs, kind: image_parquet, path: refs.parquet, image_root: pictures}
        """,
    )
    problems = {p.key: p for p in preflight(load_spec(path))}
    assert set(problems) == {
        f"images.sources[{i}]" + s
        for i, s in [(0, ".path"), (1, ".path"), (2, ".path"), (3, ".image_root")]
    }
    mixed = problems["images.sources[0].path"]
    assert mixed.level == "warning" and "(undecodable_image=1)" in mixed.message
    bad = problems["images.sources[1].path"]
    assert bad.level == "error" and "no usable record" in bad.message
    nocol = problems["images.sources[2].path"]
    assert nocol.level == "error" and "has no column 'image'" in nocol.message
    root = problems["images.sources[3].image_root"]
    assert root.message == "no such directory" and root.file == tmp_path / "pictures"
