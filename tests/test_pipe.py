from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrkit.errors import InputError, OutputError
from cxrkit.pipe import (
    TEMP_PREFIX,
    RecordWriter,
    UniqueIds,
    atomic_path,
    clean_stale_temporaries,
    expand_paths,
    item_outputs,
    parse_line,
    read_stdin_records,
    record_inputs,
    safe_name,
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


def test_safe_name_keeps_normal_ids_and_confines_the_rest() -> None:
    for normal in ("ct", "00013085_000", "LIDC-IDRI-0001_s003", "patient 7", "a..b", "été"):
        assert safe_name(normal) == normal
    hostile = ["../../x", "/etc/passwd", "..", ".", ".hidden", "a/b", "a\\b", "", "x\x00y",
               "\n", "x" * 300, "é" * 100]
    names = [safe_name(h) for h in hostile]
    for name in names:
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
        assert name not in ("", ".", "..") and len(name.encode()) <= 120
    assert len(set(names)) == len(hostile)  # collision-free
    assert names == [safe_name(h) for h in hostile]  # deterministic
    assert safe_name("a/b") != safe_name("a_b") and safe_name("a_b") == "a_b"


def test_atomic_path_creates_exclusively(tmp_path: Path) -> None:
    """Another writer creates the name while this one writes: its file stays, this one gets
    "output exists" (without --overwrite nothing is replaced), and no temporary is left."""
    target = tmp_path / "out.tiff"
    def race() -> None:
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")

    with pytest.raises(OutputError, match="output exists"):
        race()
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tiff"]
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine"


def test_temporaries_are_hidden_and_named_for_their_writer(tmp_path: Path) -> None:
    target = tmp_path / "ct.nii.gz"
    with atomic_path(target, overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TEMP_PREFIX)
        assert f".{os.getpid()}." in tmp.name and tmp.name.endswith(".ct.nii.gz")
        tmp.write_bytes(b"x")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_never_inputs(tmp_path: Path) -> None:
    """A writer killed with -9 leaves its temporary: the next writer into that folder removes
    it (only cxrkit's pattern, only of a dead process on this host), and folder expansion
    never takes it (or any hidden file) for an input."""
    from cxrkit.files import _host

    host = _host()
    stale = tmp_path / f"{TEMP_PREFIX}{host}.{_dead_pid()}.0badf00d.a_drr.tiff"
    live = tmp_path / f"{TEMP_PREFIX}{host}.{os.getppid()}.0badf00d.b_drr.tiff"
    other_host = tmp_path / f"{TEMP_PREFIX}elsewhere-{host}.{_dead_pid()}.0badf00d.c_drr.tiff"
    foreign = tmp_path / ".a_drr.tiff.k3j4h5.tiff"  # not cxrkit's pattern
    for path in (stale, live, other_host, foreign):
        path.write_bytes(b"II*\x00half")
    (tmp_path / "a.tiff").write_bytes(b"II*\x00")
    assert [p.name for p in expand_paths([str(tmp_path)], patterns=("*.tiff",))] == ["a.tiff"]
    assert clean_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other_host.exists() and foreign.exists()
    stale.write_bytes(b"again")  # each folder is looked at once per process
    assert clean_stale_temporaries(tmp_path) == []


def test_item_outputs_all_or_nothing_and_inputs_never_replaced(tmp_path: Path) -> None:
    source = tmp_path / "in.tiff"
    source.write_bytes(b"input")
    record = {"id": "in", "path": str(source), "source": "-", "labels": {"path": str(source)}}
    assert record_inputs(record) == [str(source), str(source)]
    with pytest.raises(KeyboardInterrupt), item_outputs(record_inputs(record)):  # noqa: PT012
        with atomic_path(tmp_path / "in.mask.png", overwrite=False) as tmp:
            tmp.write_bytes(b"mask")
        assert (tmp_path / "in.mask.png").exists()
        raise KeyboardInterrupt  # Ctrl-C before the primary output: the mask goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tiff"]
    link = tmp_path / "alias.tiff"
    link.symlink_to(source)
    for target in (source, link):
        with (pytest.raises(OutputError, match="replace an input"),
              item_outputs([str(source)]), atomic_path(target, overwrite=True) as tmp):
            tmp.write_bytes(b"output")
    assert source.read_bytes() == b"input"
