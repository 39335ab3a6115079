import numpy as np
import pytest
import torch

from fleetgrid.data.text import VOCAB, TokenWindows, corpus_digest, split_by_file, stdlib_sources
from fleetgrid.errors import InputShapeError, InvalidInput
from fleetgrid.models.charlm import CharLM, CharLMConfig


def test_vocab_round_trip_and_unknown():
    text = "def f(x):\n\treturn x + 1  # ok"
    assert VOCAB.decode(VOCAB.encode(text)) == text
    assert len(VOCAB) == 98
    assert VOCAB.encode("é€").tolist() == [0, 0]


def test_stdlib_corpus_split_by_file_is_deterministic_and_disjoint():
    files = stdlib_sources(max_files=40)
    assert [f.name for f in files] == sorted(f.name for f in files) and len(files) == 40
    assert corpus_digest(files) == corpus_digest(stdlib_sources(max_files=40))
    shards, heldout = split_by_file(files, 4, seed=0)
    again, _ = split_by_file(files, 4, seed=0)
    assert [[f.name for f in s] for s in shards] == [[f.name for f in s] for s in again]
    names = [f.name for s in shards for f in s] + [f.name for f in heldout]
    assert sorted(names) == sorted(f.name for f in files)  # every file once
    assert all(shards)
    # the held-out files do not depend on the fleet size
    assert [f.name for f in split_by_file(files, 2, seed=5)[1]] == [f.name for f in heldout]
    with pytest.raises(InvalidInput, match="num_vehicles"):
        split_by_file(files, 0, seed=0)


def test_token_windows_targets_are_shifted_inputs():
    ds = TokenWindows(np.arange(100) % 98, block_size=8)
    x, y = ds.sample_batch(torch.Generator().manual_seed(0), 4)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(InvalidInput, match="block_size"):
        TokenWindows(np.arange(5), block_size=8)


def test_charlm_shapes_size_and_it_learns():
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(block_size=32))
    assert 100_000 <= model.num_params() <= 1_000_000
    ds = TokenWindows.from_files(stdlib_sources(max_files=3), block_size=32)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        x, y = ds.sample_batch(gen, 16)
        logits = model(x)  # (B, T, V)
        assert logits.shape == (16, 32, 98)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 98), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0  # starts near ln(98) = 4.6
    assert model.generate(x[:1, :4], 5).shape == (1, 9)
    with pytest.raises(InputShapeError):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(InvalidInput, match="divisible"):
        CharLMConfig(n_embd=30, n_head=4)
