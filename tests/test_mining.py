"""Hard-negative mining on handwritten fixtures: a fake encoder with known similarities, exact chunked top-k, the
exclusion and window rules, and the `lightembed mine-negatives` command with provenance (fake and tiny model)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightembed.mining import (
    PROVENANCE_SUFFIX,
    mine_hard_negatives,
    mine_negatives_main,
    random_negatives,
    top_k_candidates,
)


class AngleEncoder:
    """Each text is a unit vector at a handwritten angle (degrees): cos similarity = cos(angle difference)."""

    def __init__(self, angles: dict[str, float]) -> None:
        self.angles = {" ".join(k.split()).casefold(): v for k, v in angles.items()}
        self.calls: list[list[str]] = []

    def encode(self, texts, batch_size=64, normalize=None, precision="float32"):
        self.calls.append(list(texts))
        radians = torch.tensor([math.radians(self.angles[" ".join(t.split()).casefold()]) for t in texts])
        return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1) * 3.0  # not normalised on purpose


ANGLES = {
    "anchor one": 0,
    "positive one": 5,
    "other positive of one": 20,
    "near one": 10,  # cos 10 deg = 0.985
    "mid one": 40,  # 0.766
    "far one": 80,  # 0.174
    "opposite": 190,  # -0.985 to anchor one, 0 to anchor two
    "anchor two": 100,
    "positive two": 130,  # 0.866 to anchor two
    "near two": 105,  # 0.996: closer than its positive
}


def test_top_k_matches_brute_force_in_small_chunks():
    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(23, 8, generator=gen), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(41, 8, generator=gen), dim=-1)
    rows = np.array([0, 0, 5, 22, 22, 22])
    cols = np.array([3, 40, 7, 0, 1, 2])
    bound = torch.full((23,), 0.9)
    values, indices = top_k_candidates(
        queries,
        keys,
        4,
        exclude=(rows, cols),
        min_sim=-0.5,
        max_sim=0.8,
        max_per_query=bound,
        query_chunk=5,
        key_chunk=7,
    )
    sims = queries @ keys.T
    sims[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    sims[(sims < -0.5) | (sims > 0.8)] = -torch.inf
    expected_v, expected_i = sims.topk(4, dim=1)
    assert torch.allclose(values[torch.isfinite(values)], expected_v[torch.isfinite(expected_v)], atol=1e-6)
    finite = torch.isfinite(expected_v)
    assert torch.equal(indices[finite], expected_i[finite]) and (indices[~finite] == -1).all()


def test_top_k_with_fewer_keys_than_k():
    values, indices = top_k_candidates(torch.eye(2), torch.eye(2)[:1], 3)
    assert indices.tolist() == [[0, -1, -1], [0, -1, -1]]
    assert values[0, 0] == 1 and torch.isinf(values[:, 1:]).all()
    with pytest.raises(ValueError, match="k must be"):
        top_k_candidates(torch.eye(2), torch.eye(2), 0)


def test_mining_skips_the_anchor_and_all_its_positives():
    encoder = AngleEncoder(ANGLES)
    anchors = ["anchor one", "Anchor  one", "anchor two"]  # the first two rows share an anchor
    positives = ["positive one", "other positive of one", "positive two"]
    pool = ["positive one", "POSITIVE ONE", "other positive of one", "anchor one", "near one", "mid one", "far one"]
    pool += ["opposite", "positive two", "near two"]
    mined = mine_hard_negatives(anchors, positives, encoder, candidates=pool, k=3)
    assert len(mined.candidates) == 9  # "POSITIVE ONE" is the same text as "positive one"
    assert mined.texts(0) == ["near one", "mid one", "far one"]  # never itself nor one of its two positives
    assert mined.texts(1) == mined.texts(0)
    assert mined.texts(2) == ["near two", "far one", "mid one"]
    assert mined.similarities[0][0] == pytest.approx(math.cos(math.radians(10)), abs=1e-6)
    assert mined.positive_similarity.tolist() == pytest.approx(
        [math.cos(math.radians(5)), math.cos(math.radians(20)), math.cos(math.radians(30))], abs=1e-6
    )
    # each text is embedded once
    assert sum(len(call) for call in encoder.calls) == 10  # the pool's 9 and anchor two


def test_similarity_window_and_margin():
    encoder = AngleEncoder(ANGLES)
    anchors, positives = ["anchor one", "anchor two"], ["positive one", "positive two"]
    pool = ["near one", "mid one", "far one", "opposite", "near two", "positive two", "positive one"]
    windowed = mine_hard_negatives(anchors, positives, encoder, candidates=pool, k=2, min_sim=0.1, max_sim=0.9)
    assert windowed.texts(0) == ["mid one", "far one"]  # near one (0.985) is too similar, opposite too far
    assert windowed.texts(1) == ["mid one"]  # far one (0.94) and near two are too similar, the rest too far
    # margin: a negative must be less similar than the positive minus the margin
    margin = mine_hard_negatives(anchors, positives, encoder, candidates=pool, k=1, margin=0.05)
    assert margin.texts(0) == ["mid one"]  # near one: 0.985 > cos 5 (0.996) - 0.05
    assert margin.texts(1) == ["mid one"]  # near two 0.996 > 0.866 - 0.05; next best: mid one at 60 deg (0.5)
    empty = mine_hard_negatives(anchors, positives, encoder, candidates=pool, k=1, min_sim=0.999)
    assert empty.negatives == [[], []]
    with pytest.raises(ValueError, match="empty similarity window"):
        mine_hard_negatives(anchors, positives, encoder, candidates=pool, min_sim=0.5, max_sim=0.2)


def test_default_pool_is_the_positives():
    encoder = AngleEncoder(ANGLES)
    mined = mine_hard_negatives(["anchor one", "anchor two"], ["positive one", "positive two"], encoder, k=5)
    assert mined.candidates == ["positive one", "positive two"]
    assert mined.texts(0) == ["positive two"] and mined.texts(1) == ["positive one"]
    with pytest.raises(ValueError, match="got 2 anchors but 1 positives"):
        mine_hard_negatives(["anchor one", "anchor two"], ["positive one"], encoder)


def test_random_negatives_never_pick_the_own_texts():
    anchors = ["a", "a", "b"]
    positives = ["p1", "p2", "q"]
    pool = ["a", "p1", "p2", "q", "x", "y"]
    for seed in range(10):
        picks = random_negatives(anchors, positives, pool, k=2, seed=seed)
        assert not {"a", "p1", "p2"} & set(picks[0] + picks[1])
        assert "b" not in picks[2] and "q" not in picks[2]
        assert all(len(p) == len(set(p)) == 2 for p in picks)
    with pytest.raises(ValueError, match="too few"):
        random_negatives(anchors, positives, ["x"], k=1)


@pytest.fixture
def pairs_file(tmp_path):
    rows = [
        {"s1": "anchor one", "s2": "positive one", "label": 1},
        {"s1": "anchor one", "s2": "other positive of one", "label": 1},
        {"s1": "anchor two", "s2": "positive two", "label": 1},
        {"s1": "anchor two", "s2": "far one", "label": 0},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["near one", "mid one", "near two", "opposite"])
    )
    return path


def test_mine_negatives_command_writes_triplets_and_provenance(pairs_file, tmp_path):
    out = tmp_path / "out" / "triplets.jsonl"
    provenance = mine_negatives_main(
        [
            "fake:angles",
            "--input",
            str(pairs_file),
            "--columns",
            "s1=anchor",
            "s2=positive",
            "--where",
            "label=1",
            "--candidates",
            str(tmp_path / "pool.jsonl"),
            "-k",
            "2",
            "--max-sim",
            "0.99",
            "--output",
            str(out),
        ],
        encoder=AngleEncoder(ANGLES),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"anchor": "anchor one", "positive": "positive one", "negative": "near one"},
        {"anchor": "anchor one", "positive": "positive one", "negative": "mid one"},
        {"anchor": "anchor one", "positive": "other positive of one", "negative": "near one"},
        {"anchor": "anchor one", "positive": "other positive of one", "negative": "mid one"},
        {"anchor": "anchor two", "positive": "positive two", "negative": "mid one"},  # near two 0.996 > max
        {"anchor": "anchor two", "positive": "positive two", "negative": "other positive of one"},
    ]
    saved = json.loads((out.parent / ("triplets.jsonl" + PROVENANCE_SUFFIX)).read_text())
    assert saved == provenance
    assert saved["model"] == "fake:angles" and saved["k"] == 2
    assert saved["window"] == {"min_sim": None, "max_sim": 0.99, "margin": None}
    assert saved["input"]["files"][0]["sha256"] == hashlib.sha256(pairs_file.read_bytes()).hexdigest()
    assert saved["input"]["where"] == {"label": 1} and saved["input"]["rows"] == 3
    assert saved["candidates"]["texts"] == 7 and saved["candidates"]["sources"][0]["kind"] == "local"
    assert saved["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert saved["triplets"] == 6 and saved["pairs"] == 3 and saved["pairs_without_negative"] == 0


def test_mined_triplets_load_as_a_training_source(pairs_file, tmp_path):
    from lightembed.data import PairSource, load_pairs

    out = tmp_path / "t.jsonl"
    mine_negatives_main(
        ["fake", "--input", str(pairs_file), "--columns", "s1=anchor", "s2=positive", "--output", str(out)],
        encoder=AngleEncoder(ANGLES),
    )
    ds = load_pairs(PairSource(str(out), format="triplets"))
    assert ds.column_names == ["anchor", "positive", "negative"] and len(ds) == 4  # 4 distinct pairs, k=1


def test_mine_negatives_through_the_cli_with_a_tiny_model(tiny_bert_dir, pairs_file, tmp_path, capsys):
    from lightembed.cli import COMMANDS, cli_main

    assert "mine-negatives" in COMMANDS
    out = tmp_path / "tiny.jsonl"
    cli_main(
        [
            "mine-negatives",
            str(tiny_bert_dir),
            "--input",
            str(pairs_file),
            "--columns",
            "s1=anchor",
            "s2=positive",
            "--pool",
            "positive",
            "anchor",
            "--precision",
            "bfloat16",
            "--output",
            str(out),
        ]
    )
    assert "mined" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["negative"] not in (row["anchor"], row["positive"])
        if row["anchor"] == "anchor one":
            assert row["negative"] not in ("positive one", "other positive of one")
    provenance = json.loads(out.with_name("tiny.jsonl" + PROVENANCE_SUFFIX).read_text())
    assert provenance["precision"] == "bfloat16" and provenance["candidates"]["pool_fields"] == ["positive", "anchor"]


def test_mine_negatives_bad_input(pairs_file, tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        mine_negatives_main(
            ["fake", "--input", str(pairs_file), "--output", str(tmp_path / "x.jsonl")], encoder=AngleEncoder(ANGLES)
        )
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        mine_negatives_main(
            ["fake", "--input", str(pairs_file), "--columns", "s1", "--output", str(tmp_path / "x.jsonl")],
            encoder=AngleEncoder(ANGLES),
        )


def test_top_k_over_a_pool_of_100k_candidates():
    gen = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(120_000, 16, generator=gen), dim=-1)  # 8 chunks of 16384
    queries = keys[:40] + 0.01 * torch.randn(40, 16, generator=gen)
    own = (np.arange(40), np.arange(40))  # each query's own key is excluded, like an anchor's positive
    values, indices = top_k_candidates(queries, keys, 5, exclude=own, max_sim=0.99)
    sims = queries @ keys.T
    sims[torch.arange(40), torch.arange(40)] = -torch.inf
    sims[sims > 0.99] = -torch.inf
    expected_v, expected_i = sims.topk(5, dim=1)
    assert torch.equal(indices, expected_i) and torch.allclose(values, expected_v)


def brute_force(anchors_emb, pool_emb, own, *, k, range_min=0, range_max=None, lo=None, hi=None, bound=None):
    """Reference for the rank window: sort every candidate, drop the own texts, keep range_max, filter, skip."""
    sims = anchors_emb @ pool_emb.T
    out = []
    for q in range(sims.shape[0]):
        order = [int(c) for c in torch.argsort(-sims[q]) if int(c) not in own[q]]
        if range_max is not None:
            order = order[:range_max]
        s = sims[q]
        order = [c for c in order if (lo is None or s[c] >= lo) and (hi is None or s[c] <= hi)]
        order = [c for c in order if bound is None or s[c] <= bound[q]]
        out.append(order[range_min:][:k])
    return out


def test_rank_window_and_relative_margin_match_a_sort_of_every_candidate():
    gen = torch.Generator().manual_seed(5)
    vectors = torch.nn.functional.normalize(torch.randn(60, 6, generator=gen), dim=-1)
    texts = [f"text {i}" for i in range(60)]

    class Table:
        def encode(self, batch, batch_size=64, normalize=None, precision="float32"):
            return vectors[[int(t.split()[1]) for t in batch]]

    anchors, positives, pool = texts[:10], texts[10:20], texts[10:]
    pool_emb = vectors[10:]
    own = [{i} for i in range(10)]  # the positive of anchor i is pool entry i
    pos_sim = (vectors[:10] * vectors[10:20]).sum(1)
    for options in (
        {"range_min": 2, "range_max": 12},
        {"range_min": 1, "range_max": 20, "max_sim": 0.6, "relative_margin": 0.05},
        {"range_min": 3, "margin": 0.1},
    ):
        mined = mine_hard_negatives(anchors, positives, Table(), candidates=pool, k=3, **options)
        bound = None
        if "relative_margin" in options:
            bound = pos_sim - pos_sim.abs() * options["relative_margin"]
        if "margin" in options:
            bound = pos_sim - options["margin"]
        expected = brute_force(
            vectors[:10],
            pool_emb,
            own,
            k=3,
            range_min=options.get("range_min", 0),
            range_max=options.get("range_max"),
            hi=options.get("max_sim"),
            bound=bound,
        )
        assert mined.negatives == expected, options


def test_random_sampling_stays_inside_the_window_and_is_seeded():
    encoder = AngleEncoder(ANGLES)
    anchors, positives = ["anchor one"], ["positive one"]
    pool = ["near one", "mid one", "far one", "opposite", "near two", "positive two"]
    kwargs = {"candidates": pool, "k": 2, "range_max": 4, "sampling": "random"}
    draws = {tuple(mine_hard_negatives(anchors, positives, encoder, seed=s, **kwargs).texts(0)) for s in range(20)}
    window = {"near one", "mid one", "far one", "near two"}  # the 4 nearest to anchor one
    assert all(set(d) <= window and len(d) == 2 for d in draws) and len(draws) > 1
    again = mine_hard_negatives(anchors, positives, encoder, seed=3, **kwargs).texts(0)
    assert again == mine_hard_negatives(anchors, positives, encoder, seed=3, **kwargs).texts(0)
    with pytest.raises(ValueError, match="range_max must be at least range_min \\+ k"):
        mine_hard_negatives(anchors, positives, encoder, candidates=pool, k=3, range_min=2, range_max=4)


def test_mine_negatives_options_named_as_in_sentence_transformers(pairs_file, tmp_path):
    out = tmp_path / "st.jsonl"
    provenance = mine_negatives_main(
        ["fake", "--input", str(pairs_file), "--columns", "s1=anchor", "s2=positive", "--output", str(out)]
        + ["--candidates", str(tmp_path / "pool.jsonl"), "--num-negatives", "2", "--range-min", "1"]
        + ["--range-max", "5", "--relative-margin", "0.01", "--max-sim", "0.99", "--sampling", "top"],
        encoder=AngleEncoder(ANGLES),
    )
    assert provenance["ranks"] == {
        "range_min": 1,
        "range_max": 5,
        "relative_margin": 0.01,
        "sampling": "top",
        "seed": 0,
    }
    assert provenance["window"]["max_sim"] == 0.99
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # anchor one: its least similar positive is "other positive of one" (cos 20 = 0.940), so the bound is
    # 0.940 * 0.99 = 0.930 and near one (0.985) is dropped; the window's 5 nearest non-own texts are near one, mid
    # one, far one, near two, positive two; range_min 1 skips mid one
    assert [r["negative"] for r in rows[:2]] == ["far one", "near two"]
    assert provenance["similarity"]["negatives_at_least_as_similar_as_the_positive"] == 0


def test_a_mined_file_feeds_fit_directly(tiny_bert_dir, pairs_file, sts_file, tmp_path, monkeypatch):
    from lightembed.cli import cli_main

    mined = tmp_path / "mined.jsonl"
    cli_main(
        ["mine-negatives", str(tiny_bert_dir), "--input", str(pairs_file), "--columns", "s1=anchor", "s2=positive"]
        + ["--pool", "positive", "anchor", "-k", "2", "--output", str(mined)]
    )
    monkeypatch.chdir(tmp_path)
    cli_main(
        [
            "fit",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs/data/snli_triplets.yaml"),
            "--model",
            "lightembed.stages.ContrastiveModule",
            "--model.init_args.encoder.backbone",
            str(tiny_bert_dir),
            "--model.init_args.encoder.max_length",
            "16",
            "--model.init_args.loss",
            "lightembed.losses.InBatchNegativesLoss",
            "--data.init_args.train",
            str(mined),
            "--data.init_args.train_format",
            "triplets",
            "--data.init_args.val",
            json.dumps({"tiny": str(sts_file)}),
            "--data.init_args.test",
            "{}",
            "--data.init_args.batch_size",
            "2",
            "--trainer.max_steps",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
