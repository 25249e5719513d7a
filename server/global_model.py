"""The server's copy of the model: frozen part kept here, trainable part updated each round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.freezing import count_parameters, describe_parameters, load_trainable_state, trainable_state
from common.messages import from_array_record, to_array_record
from common.model import build_model, load_tokenizer, pick_device, silence_transformers
from common.training import evaluate_model

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from common.config import FedTextConfig
    from common.data import LabeledData


class GlobalModel:
    """The global model the federation trains.

    Parameters
    ----------
    cfg : FedTextConfig
        Model, freezing and evaluation settings.
    label_names : list[str]
        The federation's labels, in id order.
    """

    def __init__(self, cfg: FedTextConfig, label_names: list[str]) -> None:
        silence_transformers()
        self.cfg = cfg
        self.label_names = list(label_names)
        self.model = build_model(cfg, self.label_names)
        self.tokenizer = load_tokenizer(cfg)
        self.device = pick_device()

    def describe(self) -> str:
        """How many parameters train (and travel)."""
        return describe_parameters(self.model, self.cfg.freeze)

    def sizes(self) -> dict[str, int]:
        """Parameter counts and fp32 bytes of the trainable part and the whole model."""
        trainable, total = count_parameters(self.model)
        return {
            "trainable_params": trainable,
            "total_params": total,
            "trainable_bytes": 4 * trainable,
            "full_model_bytes": 4 * total,
        }

    def arrays(self) -> ArrayRecord:
        """The trainable parameters, as sent to clients."""
        return to_array_record(trainable_state(self.model))

    def load(self, arrays: ArrayRecord) -> None:
        """Install new trainable parameters (the frozen ones never change)."""
        load_trainable_state(self.model, from_array_record(arrays), origin="global arrays")

    def evaluate(self, data: LabeledData) -> dict[str, Any]:
        """Central evaluation on the server's test set."""
        return evaluate_model(self.model, data.dataset, self.tokenizer, self.cfg, self.device, self.label_names)

    def save(self, folder: str | Path) -> Path:
        """Write a folder ``transformers.pipeline("text-classification", model=...)`` loads.

        LoRA adapters are merged into the base weights first, so the folder is
        a plain transformers model that needs no peft to load.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (folder / "labels.json").write_text(json.dumps(self.label_names, indent=1) + "\n")
        # What serving and evaluation need to know of the run: the length it trained at.
        card = {"max_length": self.cfg.max_length, "run": str(Path(self.cfg.out).resolve()),
                "model": self.cfg.model, "freeze": self.cfg.freeze, "labels": self.label_names}
        (folder / "fedtext.json").write_text(json.dumps(card, indent=1) + "\n")
        return folder
