"""Write the small committed fixtures with the real frameworks.

    .venv/bin/python scripts/make_fixtures.py

fixtures/example/tiny_model.pt   the demo's checkpoint: a small text model state dict (tied
                                 embedding and output head, LayerNorm, an LSTM, Linear layers)
Large fixtures are generated at test time instead (tests/conftest.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class TinyTextModel(nn.Module):
    """Embedding -> LSTM -> LayerNorm -> MLP -> head tied to the embedding."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        h = self.norm(h)
        return self.head(h + self.mlp(h))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "example")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = TinyTextModel().eval()
    torch.save(model.state_dict(), args.out / "tiny_model.pt")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
