"""`data check`: a sound store passes; corrupted metadata, data, NaN and orphans are reported with their paths."""
import json
import shutil

import numpy as np
import pytest
import tensorstore as ts

from omnimouse_jax import cli
from omnimouse_jax.data import open_store
from omnimouse_jax.data.validate import check_store
from omnimouse_jax.errors import UserError
from store_fixtures import write_session


@pytest.fixture
def store(tmp_path):
    write_session(tmp_path / "store", "s1")
    write_session(tmp_path / "store", "s2", seed=1)
    return tmp_path / "store"


def _check(store, capsys):
    code = cli.main(["data", "check", str(store)])
    return code, capsys.readouterr().out


def test_sound_store_passes(store, capsys):
    assert _check(store, capsys) == (0, f"{store}: sound\n")


def test_flipped_manifest_value_is_caught(store, capsys):
    path = store / "s1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["n_neurons"] += 1  # still valid JSON: only the catalog's checksum can tell
    path.write_text(json.dumps(manifest))
    code, out = _check(store, capsys)
    assert code == 2 and f"{path}: checksum differs from catalog.json" in out
    with pytest.raises(UserError, match="manifest.json: checksum differs"):
        open_store(store).session("s1")


def test_truncated_manifest_is_caught(store, capsys):
    path = store / "s2" / "manifest.json"
    path.write_bytes(path.read_bytes()[:50])
    code, out = _check(store, capsys)
    assert code == 2 and f"{path}: not valid JSON" in out


def test_bit_flipped_zarr_json_is_caught(store, capsys):
    path = store / "s1" / "responses" / "zarr.json"
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"shape":[') + len(b'"shape":[')
    raw[at] ^= 0x01  # the first digit of the sample count changes, e.g. 9 -> 8
    path.write_bytes(bytes(raw))
    code, out = _check(store, capsys)
    assert code == 2 and f"{path}: checksum mismatch" in out
    with pytest.raises(UserError, match="zarr.json: checksum mismatch"):
        open_store(store).session("s1")


def _first_shard(array_dir):
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())[0]


def test_truncated_shard_is_caught(store, capsys):
    shard = _first_shard(store / "s2" / "video")
    shard.write_bytes(shard.read_bytes()[:-100])
    code, out = _check(store, capsys)
    assert code == 2 and f"{shard}: checksum mismatch" in out


@pytest.mark.parametrize("field", ["video", "responses"])
def test_flipped_bytes_inside_a_shard_are_caught_naming_the_file(store, capsys, field):
    # A flipped pixel or response is a valid value: only a checksum over the chunk's bytes can tell.
    shard = _first_shard(store / "s1" / field)
    raw = bytearray(shard.read_bytes())
    raw[7] ^= 0x10  # inside the first chunk: chunks come first, the shard index last
    shard.write_bytes(bytes(raw))
    code, out = _check(store, capsys)
    assert code == 2 and f"{shard}: checksum mismatch" in out, out


def test_nan_in_train_responses_is_caught(store, capsys):
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "s1" / "responses")}}).result()
    array[5, 2].write(np.float32(np.nan)).result()  # trial 0 is train
    code, out = _check(store, capsys)
    assert code == 2 and "checksum mismatch" in out  # the shard changed after the import
    _reseal(store, "s1")  # as if the NaN had been imported: the scan of the values must still catch it
    code, out = _check(store, capsys)
    assert code == 2 and "1 train-tier samples contain NaN" in out and "checksum" not in out


def _reseal(store, name):
    """Records the session's current file checksums in its manifest and the manifest's in the catalog."""
    from omnimouse_jax.data.store import sha256_file

    manifest_path = store / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["checksums"] = {rel: sha256_file(store / name / rel) for rel in manifest["checksums"]}
    manifest_path.write_text(json.dumps(manifest))
    catalog = json.loads((store / "catalog.json").read_text())
    catalog["sessions"][name]["manifest_sha256"] = sha256_file(manifest_path)
    (store / "catalog.json").write_text(json.dumps(catalog))


def test_orphans_and_leftovers(store, capsys):
    shutil.copytree(store / "s1", store / "orphan")
    (store / ".partial-0123456789ab-s3").mkdir()
    problems, notes = check_store(store)
    assert problems == [f"{store / 'orphan'}: directory not listed in catalog.json (an interrupted write?); re-run the "
                        "import to replace it, or delete it"]
    assert len(notes) == 1 and ".partial-0123456789ab-s3" in notes[0]
    assert open_store(store).sessions == ["s1", "s2"]


def test_catalog_problems(store, tmp_path, capsys):
    (store / "catalog.json").write_text("{not json")
    code, out = _check(store, capsys)
    assert code == 2 and f"{store / 'catalog.json'}: not valid JSON" in out
    assert cli.main(["data", "check", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
