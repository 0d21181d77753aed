"""Values remembered beside the compilation cache (parallel/compile_cache.py), as the training step's FLOP count is."""
import jax
import pytest

from omnimouse_jax.parallel import compile_cache


@pytest.fixture
def cache_dir(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", before)


def test_a_value_is_computed_once_per_key_and_recomputed_when_its_file_is_damaged(cache_dir):
    calls = []

    def count(value):
        def compute():
            calls.append(value)
            return value
        return compute

    assert compile_cache.remembered("flops", {"model": {"d": 32}}, count(1.5e9)) == 1.5e9
    assert compile_cache.remembered("flops", {"model": {"d": 32}}, count(7.0)) == 1.5e9  # read back, not computed
    assert compile_cache.remembered("flops", {"model": {"d": 64}}, count(6.0e9)) == 6.0e9
    assert calls == [1.5e9, 6.0e9]
    files = sorted((cache_dir / "omnimouse").iterdir())
    assert len(files) == 2 and all(f.name.startswith("flops-") for f in files)
    for f in files:
        f.write_text("{truncated")
    assert compile_cache.remembered("flops", {"model": {"d": 32}}, count(2.0)) == 2.0
    assert calls == [1.5e9, 6.0e9, 2.0]


def test_without_a_cache_directory_nothing_is_remembered(cache_dir):
    jax.config.update("jax_compilation_cache_dir", None)
    calls = []
    for _ in range(2):
        compile_cache.remembered("flops", {"k": 1}, lambda: calls.append(1) or 3.0)
    assert calls == [1, 1]


def test_a_value_remembered_for_other_code_is_computed_again(cache_dir, monkeypatch):
    """The cache directory outlives code changes: a value stored by another version of the package is not read."""
    assert compile_cache.remembered("flops", {"k": 1}, lambda: 5.0) == 5.0
    assert compile_cache.remembered("flops", {"k": 1}, lambda: 6.0) == 5.0
    monkeypatch.setattr(compile_cache, "package_fingerprint", lambda: "another version of the source")
    assert compile_cache.remembered("flops", {"k": 1}, lambda: 6.0) == 6.0
