from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cxrkit.errors import InputError, OutputError
from cxrkit.pipe import (
    RecordWriter,
    UniqueIds,
    atomic_path,
    expand_paths,
    parse_line,
    read_stdin_records,
    sniff_suffix,
    stem_of,
    take_shard,
)


def test_stem_handles_double_suffixes() -> None:
    assert stem_of("a/b/ct.nii.gz") == "ct"
    assert stem_of("x.tiff") == "x"
    assert stem_of("dicom_dir") == "dicom_dir"


def test_parse_line_record_path_and_blank() -> None:
    rec = parse_line('{"path": "a.tiff", "degrade": {"seed": 1}}')
    assert rec == {"path": "a.tiff", "degrade": {"seed": 1}, "id": "a", "source": "a.tiff"}
    assert parse_line("dir/b.png\n") == {"id": "b", "path": "dir/b.png", "source": "dir/b.png"}
    assert parse_line("   ") is None
    with pytest.raises(InputError, match="bad JSON"):
        parse_line('{"path": ')
    with pytest.raises(InputError, match="no 'path'"):
        parse_line('{"id": "x"}')


def test_sniff_magic() -> None:
    assert sniff_suffix(b"II*\x00rest") == ".tiff"
    assert sniff_suffix(b"\x89PNG\r\n\x1a\n") == ".png"
    assert sniff_suffix(b"\x00" * 128 + b"DICM") == ".dcm"
    assert sniff_suffix(b'{"path": 1}') is None


def test_stdin_raw_image_is_spooled(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"x" * 3000
    recs = list(read_stdin_records(io.BufferedReader(io.BytesIO(data)), spool_dir=tmp_path))
    assert len(recs) == 1 and recs[0]["id"] == "stdin" and recs[0]["source"] == "-"
    assert Path(recs[0]["path"]).read_bytes() == data


def test_stdin_mixed_lines(tmp_path: Path) -> None:
    text = b'{"path": "a.tiff", "id": "k"}\n\nb.png\n'
    recs = list(read_stdin_records(io.BufferedReader(io.BytesIO(text)), spool_dir=tmp_path))
    assert [r["id"] for r in recs] == ["k", "b"]


def test_expand_paths_dirs_globs_and_missing(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    got = list(expand_paths([str(tmp_path)], patterns=("*.png",)))
    assert [p.name for p in got] == ["a.png", "b.png"]
    got = list(expand_paths([str(tmp_path / "*.txt")]))
    assert [p.name for p in got] == ["c.txt"]
    with pytest.raises(InputError, match="no such file"):
        list(expand_paths([str(tmp_path / "nope.png")]))
    with pytest.raises(InputError, match="no file matches"):
        list(expand_paths([str(tmp_path / "*.dcm")]))


def test_unique_ids_are_deterministic() -> None:
    unique = UniqueIds()
    a = unique({"id": "ct", "path": "x/ct.nii.gz", "source": "x/ct.nii.gz"})
    b = unique({"id": "ct", "path": "y/ct.nii.gz", "source": "y/ct.nii.gz"})
    again = UniqueIds()
    again({"id": "ct", "path": "x/ct.nii.gz", "source": "x/ct.nii.gz"})
    assert a["id"] == "ct" and b["id"].startswith("ct-") and b["id"] != a["id"]
    assert again({"id": "ct", "path": "y/ct.nii.gz", "source": "y/ct.nii.gz"})["id"] == b["id"]


def test_shards_partition_the_items() -> None:
    items = [{"id": str(i)} for i in range(7)]
    parts = [list(take_shard(iter(items), r, 3)) for r in range(3)]
    assert sorted(int(x["id"]) for p in parts for x in p) == list(range(7))
    assert [x["id"] for x in parts[1]] == ["1", "4"]


def test_record_writer_one_line_per_record() -> None:
    buf = io.BytesIO()
    RecordWriter(buf).write({"id": "a", "spacing_mm": (0.5, 0.5), "p": Path("x")})
    line = buf.getvalue().decode()
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"id": "a", "spacing_mm": [0.5, 0.5], "p": "x"}


def test_atomic_path_no_half_written_file(tmp_path: Path) -> None:
    target = tmp_path / "out.tiff"
    def killed_while_writing() -> None:
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_while_writing()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target, overwrite=False) as tmp:
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok"
    with pytest.raises(OutputError, match="exists"), atomic_path(target, overwrite=False):
        pass
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_unique_ids_same_source_twice() -> None:
    unique = UniqueIds()
    ids = [unique({"id": "a", "path": "a.png", "source": "a.png"})["id"] for _ in range(3)]
    assert len(set(ids)) == 3
