"""The ranker network: a pretrained encoder, masked mean pooling, a linear head.

    score = head(mean_pool(encoder(prompt))) + sum(word_weight[prompt tokens]) / sqrt(n) + a * log(n)

with n the number of prompt tokens.

The two extra terms are cheap, lexical and exported inside the same ONNX graph:
a bag-of-words score (what TF-IDF + ridge learns, trained jointly here; the
sqrt(n) norm is that of an L2-normalised count vector) and
the prompt's length, a weak but free signal.  Higher score = shorter predicted
output.

Lower layers of a BERT-style encoder can be frozen and their outputs cached
(:meth:`RankerModel.trunk`), so each training step runs only the top layers:
that is what keeps the default ranker's training inside the CPU time budget.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class RankerModel(nn.Module):
    """input_ids, attention_mask (int64 [batch, seq]) -> score (float32 [batch])."""

    def __init__(self, encoder: nn.Module, vocab_size: int, bag_of_words: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)
        self.bag_of_words = bag_of_words
        # Zero-initialised: training starts from the encoder's score alone.
        self.word_weight = nn.Embedding(vocab_size, 1) if bag_of_words else None
        if self.word_weight is not None:
            nn.init.zeros_(self.word_weight.weight)
        self.length_weight = nn.Parameter(torch.zeros(()))
        # Only encoders with segment embeddings take token_type_ids; building
        # them inside the graph keeps the ONNX interface to two inputs.
        self._token_types = getattr(encoder.config, "type_vocab_size", 0) > 0

    @classmethod
    def from_pretrained(cls, base: str | Path, bag_of_words: bool = True) -> RankerModel:
        from transformers import AutoModel

        # Eager attention traces into ONNX cleanly and is no slower on CPU at 128 tokens.
        encoder = AutoModel.from_pretrained(str(base), attn_implementation="eager")
        return cls(encoder, encoder.config.vocab_size, bag_of_words=bag_of_words)

    # -- full forward (training without caching, export, parity) --------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"token_type_ids": torch.zeros_like(input_ids)} if self._token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.score(hidden, input_ids, attention_mask)

    def score(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        count = mask.sum(dim=1).clamp(min=1.0)
        pooled = (hidden * mask).sum(dim=1) / count
        out = self.head(self.dropout(pooled)).squeeze(-1)
        if self.word_weight is not None:
            out = out + (self.word_weight(input_ids) * mask).sum(dim=1).squeeze(-1) / count.squeeze(-1).sqrt()
        return out + self.length_weight * torch.log(count.squeeze(-1))

    # -- split forward: frozen, cacheable trunk + trainable top ---------------

    def _check_layered(self) -> None:
        if not (hasattr(self.encoder, "embeddings") and hasattr(getattr(self.encoder, "encoder", None), "layer")):
            raise ValueError(
                f"--freeze-layers needs a BERT-style encoder (embeddings + encoder.layer); "
                f"{type(self.encoder).__name__} is not one: use --freeze-layers 0"
            )

    def _layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def freeze(self, layers: int) -> None:
        """Freeze the embeddings and the first `layers` layers (0 = train everything)."""
        if layers <= 0:
            return
        self._check_layered()
        for p in self.encoder.embeddings.parameters():
            p.requires_grad_(False)
        for layer in self.encoder.encoder.layer[:layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """Hidden states after the embeddings and the first `layers` layers (frozen, so cacheable)."""
        self._check_layered()
        kwargs = {"token_type_ids": torch.zeros_like(input_ids)} if self._token_types else {}
        hidden = self.encoder.embeddings(input_ids=input_ids, **kwargs)
        mask = self._layer_mask(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[:layers]:
            hidden = layer(hidden, mask)
        return hidden

    def top(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """The score from trunk hidden states: the remaining layers, pooling and head."""
        mask = self._layer_mask(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[layers:]:
            hidden = layer(hidden, mask)
        return self.score(hidden, input_ids, attention_mask)
