"""Regenerate the bundled sample: a small edge-classifier CNN exported from PyTorch, and its data.

Run with a Python that has torch (onnxfix itself never needs it):
    python tools/make_sample.py
Writes samples/edge_cnn.onnx, samples/edges_train.npz, samples/edges_val.npz. Seeded: the same
files every run for the same torch version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "samples"


class EdgeCNN(nn.Module):
    """Grey 32x32 image -> 2 classes (vertical / horizontal edge); `edges` is the first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.edges = nn.Conv2d(1, 4, 3, padding=1)
        self.features = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(self.edges(x))), 1))


def edge_images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images with one step edge at a random position: label 0 vertical, 1 horizontal."""
    labels = rng.integers(0, 2, count)
    images = np.zeros((count, 1, 32, 32), np.float32)
    for i, label in enumerate(labels):
        pos = rng.integers(6, 26)
        low, high = rng.uniform(-1, 0), rng.uniform(0, 1)
        img = np.full((32, 32), low, np.float32)
        if label == 0:
            img[:, pos:] = high
        else:
            img[pos:, :] = high
        images[i, 0] = img + rng.normal(0, 0.05, (32, 32)).astype(np.float32)
    return images, labels.astype(np.int64)


def main() -> None:
    torch.manual_seed(0)
    model = EdgeCNN().eval()
    x = torch.zeros(1, 1, 32, 32)
    torch.onnx.export(
        model,
        (x,),
        OUT / "edge_cnn.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    rng = np.random.default_rng(0)
    for name, count in (("edges_train", 256), ("edges_val", 64)):
        images, labels = edge_images(count, rng)
        np.savez(OUT / f"{name}.npz", image=images, labels=labels)


if __name__ == "__main__":
    main()
