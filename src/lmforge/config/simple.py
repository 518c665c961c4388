"""``Config``: the flat override object of the classic translation classes (torch-free).

:class:`~lmforge.compat.simple.SimpleTransformer` and :class:`~lmforge.compat.simple.SimpleSeq2SeqLSTM` accept
``config=Config(...)``. Every field defaults to ``None``, meaning "keep the constructor's argument"; a field that is
set overrides it. The Transformer reads the unprefixed fields, the LSTM the ``lstm_*`` ones, so one ``Config`` can
describe both models of a comparison.

Example:
    >>> cfg = Config(d_model=64, n_heads=2, lstm_hidden_dim=128)
    >>> cfg.d_model, cfg.lstm_hidden_dim, cfg.num_encoder_layers
    (64, 128, None)
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, ValidationError

from lmforge.config.base import StrictModel, format_validation_error
from lmforge.errors import ConfigError

__all__ = ["Config"]


class Config(StrictModel):
    """Optional overrides for the classic seq2seq classes; ``None`` keeps the constructor's value.

    Unknown field names are an error (a typo never passes silently).
    """

    # --- read by SimpleTransformer ---
    d_model: Optional[int] = Field(None, ge=1)
    n_heads: Optional[int] = Field(None, ge=1)
    num_encoder_layers: Optional[int] = Field(None, ge=1)
    num_decoder_layers: Optional[int] = Field(None, ge=1)
    dim_feedforward: Optional[int] = Field(None, ge=1, description="FFN width (default 4 * d_model)")
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    max_len: Optional[int] = Field(None, ge=1, description="longest sequence in tokens")
    # --- read by SimpleSeq2SeqLSTM (and by lmforge.models.seq2seq.lstm.Seq2SeqLSTM) ---
    lstm_emb_dim: Optional[int] = Field(None, ge=1)
    lstm_hidden_dim: Optional[int] = Field(None, ge=1)
    lstm_num_layers: Optional[int] = Field(None, ge=1)
    lstm_dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    # --- read by both ---
    pad_idx: Optional[int] = Field(None, ge=0)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, type(self), "Config")) from None

    def overrides(self, mapping: dict[str, str]) -> dict[str, Any]:
        """``{target_name: value}`` for each set field named in ``mapping`` (``{field: target_name}``)."""
        out = {}
        for field, target in mapping.items():
            value = getattr(self, field)
            if value is not None:
                out[target] = value
        return out
