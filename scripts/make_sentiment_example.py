"""Write the bundled migration example's checkpoint with real torch.

    .venv/bin/python scripts/make_sentiment_example.py

fixtures/sentiment/sentiment.pt   {"model_state_dict": ..., "epoch": ...}, as a training loop saves it,
                                  for the classifier of fixtures/sentiment/sentiment.py (random weights)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "sentiment"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=EXAMPLE / "sentiment.pt")
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import sentiment

    torch.manual_seed(0)
    model = sentiment.build()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 12}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
