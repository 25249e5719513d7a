"""Mean pooling + a linear classifier over any transformers encoder.

Sentence-transformers checkpoints (all-MiniLM-L6-v2 among them) were trained
so that the mean of the token states, over the real tokens, is the text's
embedding. ``AutoModelForSequenceClassification`` reads the first token
instead, through a pooler the checkpoint does not have (newly initialised):
it throws away what the checkpoint learned about whole texts, and a classifier
over a frozen or lightly tuned encoder starts far behind (``pooling mean``).

This file is self-contained (torch and transformers only) because it is the
modeling code of every model fedtext saves with mean pooling: ``save_pretrained``
copies it into the folder next to ``config.json``, whose ``auto_map`` names it.
Loading such a folder therefore needs either this module imported (fedtext
registers the classes with the Auto* factories) or ``trust_remote_code=True``:

    pipeline("text-classification", model="runs/demo/model", trust_remote_code=True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "fedtext_mean_pooling"


class MeanPoolingConfig(PretrainedConfig):
    """Config of :class:`MeanPoolingForSequenceClassification`.

    Parameters
    ----------
    encoder : PretrainedConfig or dict, optional
        The config of the wrapped encoder (any ``AutoModel`` architecture).
    classifier_dropout : float
        Dropout on the pooled embedding during training.
    """

    model_type = MODEL_TYPE
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder: PretrainedConfig | dict[str, Any] | None = None,
        classifier_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder, dict):
            encoder = dict(encoder)
            encoder = AutoConfig.for_model(encoder.pop("model_type"), **encoder)
        self.encoder = encoder
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the encoder's token states (and of the pooled embedding)."""
        return int(self.encoder.hidden_size)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Encoder -> mean of the token states over the attention mask -> dropout -> linear.

    The encoder's own pooler, if it has one, is removed: it is never used.
    """

    config_class = MeanPoolingConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"

    def __init__(self, config: MeanPoolingConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = AutoModel.from_config(config.encoder)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, PreTrainedModel) and module is not self:
            module._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits (and the cross-entropy loss when ``labels`` are given)."""
        kwargs.pop("token_type_ids", None)  # single texts: all zeros, and not every encoder takes them
        kwargs.pop("return_dict", None)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            return_dict=True, **kwargs,
        ).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=torch.long)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def from_encoder(
    encoder: PreTrainedModel, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]
) -> MeanPoolingForSequenceClassification:
    """A classifier around a loaded (pretrained) encoder; the classifier is newly initialised."""
    config = MeanPoolingConfig(
        encoder=encoder.config, num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    model = MeanPoolingForSequenceClassification(config)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("pooler.")]:
        raise ValueError(f"encoder weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def register() -> None:
    """Let the Auto* factories (and ``save_pretrained``'s ``auto_map``) know these classes."""
    try:
        AutoConfig.register(MODEL_TYPE, MeanPoolingConfig)
        AutoModelForSequenceClassification.register(MeanPoolingConfig, MeanPoolingForSequenceClassification)
    except ValueError:  # already registered in this process
        pass
    MeanPoolingConfig.register_for_auto_class()
    MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


register()
