"""The shared data helpers of every model family (cxrkit.data, floor 2): seeds, splits, hashes,
resizers and the one JSONL reader keep the numbers the families had when each carried its own."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from cxrkit.data.seeds import TORCH_SEED_BITS, item_seed
from cxrkit.data.splits import files_sha256, holdout_tail, split_by_patient, split_files
from cxrkit.errors import InputError
from cxrkit.pipe import read_record_file


def test_item_seed_keeps_each_scheme_bit_for_bit() -> None:
    digest = hashlib.sha256(b"3:chest").digest()
    assert item_seed(3, "chest") == int.from_bytes(digest[:8], "little")
    # enhance seeds torch with the lower 63 bits of the same number
    torch_seed = item_seed(3, "chest", bits=TORCH_SEED_BITS)
    assert torch_seed == item_seed(3, "chest") & (2**63 - 1) and torch_seed < 2**63
    # synth's per-sample scheme
    sequence = np.random.SeedSequence([3, zlib.crc32(b"chest"), 2])
    assert item_seed(3, "chest", index=2) == int(sequence.generate_state(1, np.uint64)[0])
    assert len({item_seed(3, "chest", index=i) for i in range(4)}) == 4
    with pytest.raises(InputError):
        item_seed(-1, "chest", index=0)
    with pytest.raises(InputError):
        item_seed(0, "chest", bits=65)


def test_synth_sample_seed_is_item_seed_per_sample() -> None:
    from cxrkit.synth.sampling import sample_seed

    assert sample_seed(7, "a", 1) == item_seed(7, "a", index=1)


def test_split_by_patient_keeps_patients_whole_and_is_seeded() -> None:
    paths = [f"{p:08d}_{i:03d}.png" for p in range(10) for i in range(p % 3 + 1)]
    train, val = split_by_patient(paths, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(paths)))
    held = {paths[i][:8] for i in val}
    assert len(held) == 2 and not held & {paths[i][:8] for i in train}
    assert split_by_patient(paths, 0.2, seed=0) == (train, val)
    assert split_by_patient(paths, 0.0, seed=0) == (list(range(len(paths))), [])
    with pytest.raises(InputError, match="too few"):
        split_by_patient(paths[:1], 0.5, seed=0)


def test_split_files_draws_the_permutation_of_seed_and_7() -> None:
    # the numbers DDPM-LQ's runs recorded: a permutation from default_rng([seed, 7])
    order = np.random.default_rng([4, 7]).permutation(10)
    train, val = split_files(10, 0.3, seed=4)
    assert val == sorted(int(i) for i in order[:3]) and train == sorted(int(i) for i in order[3:])


def test_holdout_tail_holds_out_the_last_fifth_at_most() -> None:
    assert holdout_tail(list(range(10)), 4) == (list(range(8)), [8, 9])
    assert holdout_tail(list(range(3)), 2) == ([0, 1, 2], [0, 1])  # too few: validate on train


def test_files_sha256_names_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    assert files_sha256([tmp_path / "a.png"]) == {"a.png": hashlib.sha256(b"abc").hexdigest()}


def test_resizers_share_one_core_and_keep_their_numbers() -> None:
    import torch
    import torch.nn.functional as F

    from cxrkit.data.images import bicubic_upsample, resize, resize_short_side

    rng = np.random.default_rng(0)
    image = rng.random((37, 50), dtype=np.float32)
    x = torch.from_numpy(image)[None, None]
    # the enhancer's upsampling: plain bicubic by an integer factor (not antialiased)
    expected = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(bicubic_upsample(torch.from_numpy(image), 2), expected[0, 0])
    # the degraders' resize: antialiased bicubic
    small = F.interpolate(x, size=(20, 25), mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
    assert np.array_equal(resize(image, (20, 25)), small[0, 0].numpy())
    assert min(resize_short_side(image, 16).shape) == 16


def test_read_record_file_is_the_one_jsonl_reader(tmp_path: Path) -> None:
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"path": "a.png"}) + "\n\nb.png\n")
    assert [r["id"] for r in read_record_file(records)] == ["a", "b"]
    records.write_text('{"path": "a.png"}\n{"bad\n')
    with pytest.raises(InputError) as info:
        list(read_record_file(records))
    assert info.value.path == f"{records} line 2"
    with pytest.raises(InputError, match="no such file"):
        list(read_record_file(tmp_path / "missing.jsonl"))
