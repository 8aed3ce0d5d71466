"""`lightembed evaluate` suites and the JSON report: provenance beside every score, markdown on stdout, errors."""

import hashlib
import json

import pytest

from lightembed.cli import COMMANDS, cli_main
from lightembed.evaluation.report import build_report, environment, run_suite, suite_sources


def test_suites_expand_to_the_named_sets(tmp_path):
    chosen = suite_sources(["sts", "senteval", "clustering"], str(tmp_path))
    assert list(chosen["classification"]) == ["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"]
    assert chosen["sts"] == {"stsb_test": "mteb/stsbenchmark-sts"}  # no local copy under this root
    assert list(chosen["clustering"]) == ["trec"]
    with pytest.raises(ValueError, match="unknown suite"):
        suite_sources(["nope"])


def test_evaluate_suites_print_tables_and_write_a_report(tiny_bert_dir, tiny_data_root, tmp_path, capsys):
    out = tmp_path / "report.json"
    report = cli_main_report(
        [
            "evaluate",
            str(tiny_bert_dir),
            "--suite",
            "sts",
            "senteval",
            "clustering",
            "--folds",
            "2",
            "--data-root",
            str(tiny_data_root),
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "### STS" in printed and "| stsb_test | 6 |" in printed
    assert "### Classification" in printed and "| mrpc | split | 12 | 4 |" in printed and "| mr | 2-fold |" in printed
    assert "### Clustering" in printed and "| trec | 15 | 3 |" in printed
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("model", "pooling", "dtype", "precision", "seed", "git_commit", "packages", "data"):
        assert key in saved
    assert saved["pooling"] == "mean" and saved["dtype"] == "float32" and saved["seed"] == 0
    assert saved["packages"]["torch"] and saved["packages"]["scikit-learn"]
    assert set(saved["classification"]) == {"mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"}
    assert 0 <= saved["classification"]["trec"]["logreg"]["accuracy"] <= 100
    stsb = tiny_data_root / "sts/stsb/test.jsonl"
    [file_info] = saved["data"]["sts/stsb_test"]["files"]
    assert file_info["sha256"] == hashlib.sha256(stsb.read_bytes()).hexdigest()
    sst2 = {f["path"].rsplit("/", 1)[1] for f in saved["data"]["classification/sst2"]["files"]}
    assert sst2 == {"train.jsonl", "validation.jsonl", "test.jsonl"}
    # every score carries its provenance
    assert len(saved["scores"]) == 2 + 7 + 1
    for row in saved["scores"]:
        for key in ("model", "pooling", "dtype", "precision", "seed", "git_commit", "data_sha256", "value"):
            assert key in row
    stsb_row = next(r for r in saved["scores"] if r["set"] == "stsb_test" and r["metric"] == "spearman")
    assert (
        stsb_row["data_sha256"] == [file_info["sha256"]] and stsb_row["value"] == saved["sts"]["stsb_test"]["spearman"]
    )


def cli_main_report(argv):
    return COMMANDS[argv[0]](argv[1:])


def test_classification_by_name_several_classifiers_and_bf16(tiny_bert_dir, tiny_data_root, capsys):
    report = cli_main_report(
        [
            "evaluate",
            str(tiny_bert_dir),
            "--classification",
            "trec",
            "mine=classification/sst2",
            "--classifier",
            "logreg",
            "nb",
            "--precision",
            "bfloat16",
            "--data-root",
            str(tiny_data_root),
        ]
    )
    assert set(report["classification"]["mine"]) == {"logreg", "nb"}
    assert report["sts"] == {} and report["precision"] == "bfloat16"
    assert "| set | protocol | train | test | logreg | nb |" in capsys.readouterr().out


def test_bad_input_names_the_file_or_option(tiny_bert_dir, tiny_data_root, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"text {i}", "label": "x"}) + "\n" for i in range(12)))
    with pytest.raises(ValueError, match=r"one\.jsonl.*single class"):
        cli_main(["evaluate", str(tiny_bert_dir), "--classification", f"one={one}"])
    with pytest.raises(FileNotFoundError, match="--data-root"):
        cli_main(["evaluate", str(tiny_bert_dir), "--sts", "x.jsonl", "--data-root", str(tmp_path / "absent")])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cli_main(["evaluate", str(tmp_path / "nowhere"), "--suite", "sts", "--data-root", str(tiny_data_root)])
    with pytest.raises(ValueError, match="--folds"):
        cli_main(["evaluate", str(tiny_bert_dir), "--classification", "mr", "--folds", "1"])


def test_run_suite_with_any_encoder_and_report_without_a_module(vector_encoder, tmp_path, write_jsonl):
    write_jsonl(tmp_path / "c.jsonl", [{"text": f"v:{(-1) ** i},{i % 3} r{i}", "label": i % 2} for i in range(20)])
    results = run_suite(vector_encoder, clustering={"c": str(tmp_path / "c.jsonl")})
    assert results.clustering[0].v_measure == pytest.approx(100.0)
    report = build_report(results, "vectors", env=environment())
    assert report["pooling"] is None and report["clustering"]["c"]["n"] == 20
    assert report["encode"]["texts"] == 20


def _beir(folder, write_jsonl):
    docs = [("d1", "v:1,0 cats"), ("d2", "v:0,1 dogs"), ("d3", "v:-1,0 fish"), ("d4", "v:0,-1 birds")]
    write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in docs])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "v:1,0.2 cat"}, {"_id": "q2", "text": "v:0.1,1 dog"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return folder


def test_run_suite_scores_retrieval_and_reranking_into_the_report(vector_encoder, tmp_path, write_jsonl):
    folder = _beir(tmp_path / "beir", write_jsonl)
    rr = write_jsonl(
        tmp_path / "rr.jsonl",
        [{"query": "v:1,0 q", "positive": "v:1,0 p", "negative": ["v:0,1 n", "v:1,0.1 n2"]}],
    )
    results = run_suite(vector_encoder, retrieval={"toy": str(folder)}, reranking={"rr": str(rr)}, retrieval_ks=[1, 3])
    [toy] = results.retrieval
    # q1 finds d1 first; q2 (0.1, 1) ranks d2 (0.995), d1 (0.0995), then its relevant d3 (-0.0995)
    assert toy.metrics["mrr@1"] == pytest.approx(0.5) and toy.metrics["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert results.reranking[0].mrr == pytest.approx(1.0) and results.reranking[0].map == pytest.approx(1.0)
    report = build_report(results, "vectors", env=environment())
    assert report["retrieval"]["toy"]["recall@3"] == pytest.approx(1.0) and report["retrieval"]["toy"]["queries"] == 2
    assert report["reranking"]["rr"]["mrr@10"] == pytest.approx(1.0)
    rows = {(r["task"], r["set"], r["metric"]) for r in report["scores"]}
    assert ("retrieval", "toy", "ndcg@3") in rows and ("reranking", "rr", "map") in rows
    assert report["data"]["retrieval/toy"]["kind"] == "local"
    assert report["settings"]["retrieval_ks"] == [1, 3]


def test_evaluate_command_with_retrieval_reranking_and_device(tiny_bert_dir, tmp_path, write_jsonl, capsys):
    from lightembed.evaluation.commands import evaluate_main

    folder = _beir(tmp_path / "beir", write_jsonl)
    rr = write_jsonl(tmp_path / "rr.jsonl", [{"query": "a cat", "positive": "cats", "negative": "fish"}])
    out = tmp_path / "report.json"
    report = evaluate_main(
        [str(tiny_bert_dir), "--retrieval", f"toy={folder}", "--reranking", f"rr={rr}", "--retrieval-k", "1", "10"]
        + ["--query-instruction", "query: ", "--device", "cpu", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert "### Retrieval (x100)" in printed and "### Reranking (x100)" in printed and "| toy | 2 | 4 |" in printed
    saved = json.loads(out.read_text())
    assert saved["retrieval"]["toy"]["ndcg@10"] == report["retrieval"]["toy"]["ndcg@10"]
    assert set(saved["retrieval"]["toy"]) >= {f"{m}@{k}" for m in ("ndcg", "mrr", "recall", "map") for k in (1, 10)}
    assert saved["settings"]["query_instruction"] == "query: " and "sts" not in saved["settings"].get("suites", [])
    assert saved["sts"] == {} and saved["reranking"]["rr"]["samples"] == 1


def test_evaluate_truncates_and_cuts_layers_as_the_python_api_does(tiny_bert_dir, tmp_path, write_jsonl):
    """`evaluate --truncate-dim D --layers K` scores the encoder `load_encoder(..., truncate_dim=D, layers=K)` gives."""
    from lightembed.api import load_encoder
    from lightembed.evaluation.commands import evaluate_main
    from lightembed.evaluation.sts import evaluate_sts

    rows = [
        {
            "sentence1": f"a sentence about topic {i}",
            "sentence2": f"another text on item {i % 3}",
            "score": float(i % 5),
        }
        for i in range(12)
    ]
    sts = write_jsonl(tmp_path / "sts.jsonl", rows)
    report = evaluate_main([str(tiny_bert_dir), "--sts", f"toy={sts}", "--truncate-dim", "8", "--layers", "1"])
    encoder = load_encoder(str(tiny_bert_dir), truncate_dim=8, layers=1)
    assert encoder.encode(["x"]).shape == (1, 8)
    [expected] = evaluate_sts(encoder, {"toy": str(sts)})
    full = evaluate_main([str(tiny_bert_dir), "--sts", f"toy={sts}"])
    assert report["sts"]["toy"]["spearman"] == pytest.approx(expected.spearman, abs=1e-6)
    assert report["sts"]["toy"]["spearman"] != pytest.approx(full["sts"]["toy"]["spearman"], abs=1e-6)


def test_evaluate_switches_a_decoders_attention_as_the_python_api_does(tiny_llama_dir, tiny_bert_dir, tmp_path, capsys):
    """`evaluate --bidirectional / --no-bidirectional` scores a decoder with that attention (LLM2Vec's baselines from
    the command line); an encoder asked for causal attention is one line naming the model type, exit 1."""
    from lightembed.api import load_encoder
    from lightembed.cli import main
    from lightembed.evaluation.commands import evaluate_main
    from lightembed.evaluation.sts import evaluate_sts

    rows = [
        {"sentence1": f"a text {i} about {i % 4}", "sentence2": f"words {i % 3} and {i}", "score": i % 5}
        for i in range(12)
    ]
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {}
    for flag, bidirectional in (("--bidirectional", True), ("--no-bidirectional", False)):
        report = evaluate_main([str(tiny_llama_dir), "--sts", f"toy={sts}", flag])
        encoder = load_encoder(str(tiny_llama_dir), bidirectional=bidirectional)
        assert encoder.backbone.config.is_causal is (not bidirectional)
        [expected] = evaluate_sts(encoder, {"toy": str(sts)})
        assert report["sts"]["toy"]["spearman"] == pytest.approx(expected.spearman, abs=1e-6)
        scores[flag] = report["sts"]["toy"]["spearman"]
    assert scores["--bidirectional"] != pytest.approx(scores["--no-bidirectional"], abs=1e-6)

    capsys.readouterr()
    assert main(["evaluate", str(tiny_bert_dir), "--sts", f"toy={sts}", "--no-bidirectional"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # not the weight-loading progress bars
    assert len(errors) == 1 and errors[0].startswith("lightembed evaluate: error:") and "Traceback" not in err
    assert "is an encoder" in errors[0] and "causal" in errors[0]
