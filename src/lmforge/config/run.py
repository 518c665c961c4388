"""RunConfig: everything a run needs, as saved to ``config.yaml`` in the run folder."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from lmforge.config.base import StrictModel
from lmforge.config.data import DataConfig
from lmforge.config.model import LM_FAMILIES, SEQ2SEQ_FAMILIES, ModelConfig
from lmforge.config.quantization import QuantizationConfig
from lmforge.config.tokenizer import TokenizerConfig
from lmforge.config.train import TrainConfig
from lmforge.config.transformer import TransformerConfig

__all__ = ["RunConfig"]


class RunConfig(StrictModel):
    """Model + tokenizer + data + training settings + output folder."""

    task: Literal["lm", "translate"] = "lm"
    model: ModelConfig = Field(default_factory=TransformerConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: str = "runs/latest"
    # set by `lmforge quantize`: the weights are int8/int4 (models.quantized rebuilds the layers on load)
    quantization: Optional[QuantizationConfig] = None

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data: Any) -> Any:
        # A model section without `family` means the default family, the Transformer.
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "family" not in data["model"]:
            data = {**data, "model": {"family": "transformer", **data["model"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        fam = self.model.family
        if self.task == "lm" and fam not in LM_FAMILIES:
            raise ValueError(f"task 'lm' needs a model family in {LM_FAMILIES}, got {fam!r}")
        if self.task == "translate" and fam not in SEQ2SEQ_FAMILIES:
            raise ValueError(f"task 'translate' needs a model family in {SEQ2SEQ_FAMILIES}, got {fam!r}")
        if fam == "transformer" and self.data.block_size and self.data.block_size > self.model.block_size:
            raise ValueError(
                f"data.block_size ({self.data.block_size}) exceeds the model's context (model.block_size {self.model.block_size})"
            )
        return self

    @property
    def block_size(self) -> int:
        """The training window in tokens."""
        if self.data.block_size:
            return self.data.block_size
        return getattr(self.model, "block_size", 256)
