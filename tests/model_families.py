"""Tiny, randomly initialised models of the families users bring, for fast tests.

Each folder holds a 2-block model of one architecture (BERT, DistilBERT,
RoBERTa, GPT-2, Llama) saved with ``save_pretrained`` and the packaged
MiniLM tokenizer, as a user's local checkpoint folder would be.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("bert", "distilbert", "roberta", "gpt2", "llama")


def _config(family: str, vocab: int, pad: int):  # noqa: ANN202
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, RobertaConfig

    small = {"vocab_size": vocab, "pad_token_id": pad}
    # GPT-style checkpoints come without a padding token id: fedtext must supply it.
    decoder = {"vocab_size": vocab, "bos_token_id": pad, "eos_token_id": pad}
    if family == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, **small)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                max_position_embeddings=128, **small)
    if family == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=130, **small)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **decoder)
    if family == "llama":
        return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                           **decoder)
    raise ValueError(family)


def make_family_model(family: str, folder: Path) -> Path:
    """Save a tiny random model of ``family`` (with MiniLM's tokenizer) in ``folder``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from common.model import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(family, len(tokenizer), tokenizer.pad_token_id))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
