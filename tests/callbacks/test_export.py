"""A lightembed export loads in sentence-transformers offline and gives the same embeddings (±1e-5)."""

import pytest
import torch

from lightembed.api import load_encoder
from lightembed.encoder import Encoder, EncoderSettings

TEXTS = ["A man is playing a guitar.", "Someone plays music on stage tonight.", "Short."]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token", "weighted_mean"])
@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_transformers_gives_the_same_embeddings(tiny_bert_dir, tmp_path, pooling, normalize):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling=pooling, normalize=normalize, max_length=64))
    folder = module.save_pretrained(tmp_path / "export")
    peer = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    ours = module.encode(TEXTS)
    theirs = torch.as_tensor(peer.encode(TEXTS, convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_export_reloads_in_lightembed_with_its_settings(tiny_bert_dir, tmp_path):
    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), pooling="max", normalize=True, max_length=48))
    folder = module.save_pretrained(tmp_path / "export")
    reloaded = load_encoder(str(folder))
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_length) == ("max", True, 48)
    torch.testing.assert_close(reloaded.encode(TEXTS), module.encode(TEXTS))


def test_packaged_sentence_transformers_folder_settings_are_read(minilm_path):
    encoder = load_encoder(str(minilm_path))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 256)


def test_lora_backbone_is_exported_merged_with_its_adapter(tiny_bert_dir, tmp_path):
    from lightembed.lora import LoRASettings

    module = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), lora=LoRASettings(r=4, alpha=8)))
    module.build()
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # a non-zero adapter, so the merge has something to do
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    folder = module.save_pretrained(tmp_path / "export")
    assert (folder / "adapter" / "adapter_config.json").is_file()
    reloaded = load_encoder(str(folder))
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(reloaded.encode(TEXTS), module.encode(TEXTS), atol=1e-5, rtol=1e-5)
