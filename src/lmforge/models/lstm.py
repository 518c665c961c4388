"""The LSTM language model: embedding -> stacked unidirectional LSTM -> linear head (optionally tied).

The recurrent state ``(h, c)`` is the decoding state, so generation costs the same per token however long the
text gets, and a model has no context limit (``max_context`` is ``None``).

Padding in :meth:`LSTMLanguageModel.step` is exact: positions marked 0 in ``attention_mask`` never touch the
state. Each row's real tokens are moved to the front, run as a packed sequence (so the LSTM stops at each row's
last real token), and the outputs are put back where the tokens came from. A left-padded batch therefore gives
every row the logits it would get alone.

Shapes: B = batch, T = time, E = embedding width, H = hidden width, L = layers, V = vocabulary.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.config.lstm import LSTMConfig
from lmforge.models.int8_cpu import PackCache

__all__ = ["LSTMLanguageModel", "LSTMState"]

# (h, c), each (L, B, H).
LSTMState = tuple[Tensor, Tensor]


class LSTMLanguageModel(nn.Module):
    """A next-token LSTM language model that satisfies :class:`~lmforge.models.protocol.CausalLM`.

    Dropout (``config.dropout``) is applied to the embeddings, between LSTM layers and before the head, as in
    Zaremba et al. (arXiv:1409.2329). With ``tie_embeddings`` the head shares the embedding matrix
    (arXiv:1608.05859, arXiv:1611.01462).

    Args:
        config: the model's :class:`~lmforge.config.LSTMConfig`.

    Example:
        >>> from lmforge.config import LSTMConfig
        >>> model = LSTMLanguageModel(LSTMConfig(vocab_size=50, embedding_dim=16, hidden_dim=16, num_layers=1))
        >>> idx = torch.randint(0, 50, (2, 5))
        >>> logits, loss = model(idx, idx)
        >>> tuple(logits.shape)
        (2, 5, 50)
    """

    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.max_context: Optional[int] = None
        self.hidden_size: int = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            input_size=config.embedding_dim,
            hidden_size=config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)
        self._fused = PackCache()  # the one-token step's joined matrices (see _fused_weights)
        self._init_weights()
        if config.tie_embeddings:
            self.head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        r = self.config.init_range
        nn.init.uniform_(self.embedding.weight, -r, r)
        nn.init.uniform_(self.head.weight, -r, r)
        nn.init.zeros_(self.head.bias)
        # The LSTM keeps PyTorch's default U(-1/sqrt(H), 1/sqrt(H)).

    # ------------------------------------------------------------------ protocol

    def forward(self, idx: Tensor, targets: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Runs the whole sequence from a zero state.

        Args:
            idx: token ids (B, T).
            targets: next-token ids (B, T); positions equal to -100 are ignored.

        Returns:
            ``(logits (B, T, V), loss)``: the mean cross-entropy over non-ignored targets, or ``None``.
        """
        out, _ = self._run(idx, None, None)
        logits = self.head(self.dropout(out))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def init_state(self, batch_size: int) -> LSTMState:
        """Zero ``(h, c)``, each (L, B, H), on the model's device and dtype."""
        w = self.head.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_dim)
        return torch.zeros(shape, device=w.device, dtype=w.dtype), torch.zeros(shape, device=w.device, dtype=w.dtype)

    def step(
        self, idx: Tensor, state: Optional[LSTMState] = None, attention_mask: Optional[Tensor] = None
    ) -> tuple[Tensor, LSTMState]:
        """Feeds ``idx`` (B, T) after what ``state`` has seen.

        Args:
            idx: new token ids (B, T).
            state: ``(h, c)`` from :meth:`init_state` or a previous call (``None`` = a fresh state).
            attention_mask: (B, T), 1 for real tokens and 0 for padding; padding leaves the state untouched.

        Returns:
            ``(logits (B, T, V), new_state)``. At a padded position the logits are those of the state so far.
        """
        one = idx.dim() == 2 and idx.size(1) == 1 and (state is None or state[0].size(1) == idx.size(0))
        weights = self._fused_weights() if one and self._can_fuse() else None  # else nn.LSTM (and its checks)
        if weights is not None and (attention_mask is None or bool(attention_mask.all())):
            h, c = self.init_state(idx.size(0)) if state is None else (
                state[0].clone(memory_format=torch.contiguous_format),
                state[1].clone(memory_format=torch.contiguous_format))
            return self._logits(self._fused_step(idx.view(-1), h, c, weights)).unsqueeze(1), (h, c)
        out, new_state = self._run(idx, state, attention_mask)
        return self.head(self.dropout(out)), new_state

    def step_rows(self, tokens: Tensor, state: LSTMState, want: Optional[Sequence[int]] = None) -> Tensor:
        """Feeds one token to each of the first ``n = tokens.numel()`` rows of ``state`` and updates those rows
        in place (the batching engine's slots: no copy of the state in or out).

        Args:
            tokens: (n,) token ids.
            state: ``(h, c)``, each (L, S, H) and contiguous, with ``S >= n``.
            want: the rows whose logits are wanted (default: all; the output head then runs on those only).

        Returns:
            The next-token logits (n, V), or (len(want), V).
        """
        n = tokens.numel()
        h, c = state
        rows = slice(None) if want is None else torch.as_tensor(want, dtype=torch.long, device=h.device)
        weights = self._fused_weights() if self._can_fuse() and h.is_contiguous() and c.is_contiguous() else None
        if weights is not None:
            return self._logits(self._fused_step(tokens.view(n), h, c, weights)[rows])
        logits, (h_new, c_new) = self.step(tokens.view(n, 1), (h[:, :n].contiguous(), c[:, :n].contiguous()))
        h[:, :n] = h_new
        c[:, :n] = c_new
        return logits[rows, -1]

    def prefill(self, rows: Sequence[Sequence[int]], state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        """Feeds each row its own tokens (rows may differ in length) after ``state``; returns the logits after each
        row's last token (B, V) and the state with every row at its own end.

        Exact without padding: all rows run together over the positions they all have, then the longer ones go on
        together over the next stretch, and so on (one LSTM call per distinct length, whose total time steps are
        those of the longest row). Unlike a masked :meth:`step` (packed sequences), every call takes PyTorch's
        fused (oneDNN) LSTM on a CPU. A row with no tokens keeps its state and gets the logits of its top layer.
        """
        bsz = len(rows)
        h, c = self.init_state(bsz) if state is None else (state[0].clone(), state[1].clone())
        device = h.device
        top = h[-1].clone()  # (B, H): the top layer's h after each row's last token
        lengths = [len(r) for r in rows]
        done = 0
        for end in sorted(set(lengths) - {0}):
            active = [i for i, n in enumerate(lengths) if n >= end]
            idx = torch.as_tensor([list(rows[i][done:end]) for i in active], dtype=torch.long, device=device)
            rows_t = torch.as_tensor(active, device=device)
            out, (h_new, c_new) = self._segment(idx, (h[:, rows_t], c[:, rows_t]))
            h[:, rows_t], c[:, rows_t] = h_new, c_new
            top[rows_t] = out
            done = end
        return self._logits(top), (h, c)

    def _segment(self, idx: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """The top layer's last output (B, H) and the new state after ``idx`` (B, T), unmasked."""
        weights = self._fused_weights() if idx.size(1) == 1 and self._can_fuse() else None
        if weights is None:
            out, new_state = self._run(idx, state, None)
            return out[:, -1], new_state
        h = state[0].contiguous()  # a gathered copy already
        c = state[1].contiguous()
        return self._fused_step(idx.view(-1), h, c, weights), (h, c)

    def hidden_states(self, idx: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Top-layer LSTM outputs (B, T, H) from a zero state; padding (mask 0) does not change real tokens'."""
        out, _ = self._run(idx, None, attention_mask)
        return out

    # ------------------------------------------------------------------ internals

    def _run(self, idx: Tensor, state: Optional[LSTMState], mask: Optional[Tensor]) -> tuple[Tensor, LSTMState]:
        """Top-layer outputs (B, T, H) and the final state, honouring ``mask``."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time), got shape {tuple(idx.shape)}")
        bsz, t = idx.shape
        if state is None:
            state = self.init_state(bsz)
        if mask is not None:
            mask = mask.to(device=idx.device, dtype=torch.bool)
            if mask.shape != idx.shape:
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} != idx shape {tuple(idx.shape)}")
            if bool(mask.all()):
                mask = None
        if t == 0:
            return state[0].new_zeros(bsz, 0, self.config.hidden_dim), state
        if mask is None:
            out, new_state = self.lstm(self.dropout(self.embedding(idx)), state)
            return out, new_state
        return self._run_masked(idx, state, mask)

    def _can_fuse(self) -> bool:
        """Whether the one-token step may use :meth:`_fused_step`: a float ``nn.LSTM`` (not a quantized one), in
        eval mode, with gradients off (the joined matrices are copies, outside autograd)."""
        lstm = self.lstm
        return type(lstm) is nn.LSTM and lstm.bias and not self.training and not torch.is_grad_enabled()

    def _fused_weights(self) -> Optional[list[tuple[Tensor, Tensor]]]:
        """Per layer ``(W, b)``: ``W`` (E_l + H, 4H) is ``[W_ih, W_hh]`` transposed, so one product of ``[x, h]``
        gives the four gates, reordered to (i, f, o, g) so that one sigmoid covers three of them; ``b`` is
        ``b_ih + b_hh``. Rebuilt when a weight is replaced or changed in place; ``None`` for weights made under
        ``torch.inference_mode`` (no version counter tells whether they changed)."""
        lstm, hidden = self.lstm, self.hidden_size
        flat = lstm._flat_weights  # nn.LSTM keeps this list in step with its parameters
        try:
            key = tuple((w.data_ptr(), w._version) for w in flat)
        except RuntimeError:
            return None

        def build() -> list[tuple[Tensor, Tensor]]:
            order = torch.cat([torch.arange(0, 2 * hidden), torch.arange(3 * hidden, 4 * hidden),
                               torch.arange(2 * hidden, 3 * hidden)]).to(flat[0].device)
            out = []
            with torch.no_grad():
                for k in range(self.config.num_layers):
                    w_ih, w_hh, b_ih, b_hh = flat[4 * k: 4 * k + 4]
                    w = torch.cat([w_ih, w_hh], dim=1)[order].t().contiguous()
                    out.append((w, (b_ih + b_hh)[order].contiguous()))
            return out

        return self._fused.get(key, build)

    def _fused_step(self, tokens: Tensor, h: Tensor, c: Tensor, weights: list[tuple[Tensor, Tensor]]) -> Tensor:
        """One token per row for rows ``0 .. n-1`` of the contiguous ``h``, ``c`` (L, S, H), updated in place: per
        layer one ``addmm`` on ``[x, h]`` and five pointwise operations (the LSTM cell's equations,
        arXiv:1503.04069), instead of ``nn.LSTM``'s general sequence machinery. Returns the top layer's new
        ``h`` (n, H) (a view of ``h``)."""
        n, hidden = tokens.numel(), self.hidden_size
        x = F.embedding(tokens, self.embedding.weight)  # (n, E)
        for k, (w, b) in enumerate(weights):
            h_k, c_k = h[k, :n], c[k, :n]  # (n, H) views, contiguous
            gates = torch.addmm(b, torch.cat([x, h_k], dim=1), w)  # (n, 4H): i, f, o, g
            sig = gates[:, : 3 * hidden].sigmoid_()
            g = gates[:, 3 * hidden:].tanh_()
            c_k.mul_(sig[:, hidden: 2 * hidden]).addcmul_(sig[:, :hidden], g)  # c = f * c + i * g
            torch.mul(sig[:, 2 * hidden:], torch.tanh(c_k), out=h_k)  # h = o * tanh(c)
            x = h_k
        return x

    def _logits(self, top: Tensor) -> Tensor:
        head = self.head
        return F.linear(top, head.weight, head.bias) if type(head) is nn.Linear else head(top)

    def _run_masked(self, idx: Tensor, state: LSTMState, mask: Tensor) -> tuple[Tensor, LSTMState]:
        bsz, t = idx.shape
        # Stable sort puts each row's real tokens first, in their original order.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, T)
        compact = idx.gather(1, order)  # (B, T)
        lengths = mask.sum(dim=1)  # (B,)
        empty = lengths == 0
        x = self.dropout(self.embedding(compact))  # (B, T, E)
        # pack_padded_sequence needs length >= 1; an empty row runs one throwaway token and keeps its old state.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        packed_out, (h, c) = self.lstm(packed, state)
        out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=t)  # (B, T, H)
        if bool(empty.any()):
            keep = empty.view(1, bsz, 1)
            h = torch.where(keep, state[0], h)
            c = torch.where(keep, state[1], c)
        # Output at position j is the top-layer h after the real tokens up to j: index 0 is the incoming state.
        seq = torch.cat([state[0][-1].unsqueeze(1), out], dim=1)  # (B, T + 1, H)
        where = mask.long().cumsum(dim=1)  # (B, T)
        out = seq.gather(1, where.unsqueeze(-1).expand(bsz, t, seq.size(-1)))  # (B, T, H)
        return out, (h, c)

    def extra_repr(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.parameters())
        return (
            f"parameters={_human(n)} ({n:,}), vocab_size={c.vocab_size}, embedding_dim={c.embedding_dim}, "
            f"hidden_dim={c.hidden_dim}, num_layers={c.num_layers}, dropout={c.dropout}, "
            f"tie_embeddings={c.tie_embeddings}, init_range={c.init_range}"
        )


def _human(n: int) -> str:
    """2081232 -> '2.08M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
