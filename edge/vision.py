"""The second real model: a small ViT image classifier trained HERE, by this project, on Fashion-MNIST
(it is not a published pretrained model). Cached in the data directory after the first training."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edge.console import terminal
from edge.data import FASHION_CLASSES, fashion_mnist
from edge.files import data_dir
from edge.errors import EdgeError

MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel statistics (train split)


def vit_dir():
    return data_dir() / "fashion-vit"


def _config():
    from transformers import ViTConfig

    return ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=128, num_hidden_layers=6,
                     num_attention_heads=4, intermediate_size=256, num_labels=len(FASHION_CLASSES),
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     id2label=dict(enumerate(FASHION_CLASSES)), label2id={c: i for i, c in enumerate(FASHION_CLASSES)})


def image_batches(images: torch.Tensor, batch_size: int = 256) -> list[dict]:
    """(N, 1, 28, 28) images in [0, 1] -> normalized input batches."""
    x = (images - MEAN) / STD
    return [{"pixel_values": x[i: i + batch_size]} for i in range(0, len(x), batch_size)]


def train_fashion_vit(epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                      progress: bool = True):
    """Train the 6-layer ViT (patch 7, hidden 128) on Fashion-MNIST's 60k training images.
    Returns (model, seconds)."""
    from transformers import ViTForImageClassification

    torch.manual_seed(seed)
    images, labels = fashion_mnist("train")
    x = (images - MEAN) / STD
    model = ViTForImageClassification(_config())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    bar = tqdm(total=steps, desc="training the Fashion-MNIST ViT", disable=not progress, file=terminal())
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = perm[i: i + batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5  # horizontal flips: clothes are left-right symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(pixel_values=xb).logits, labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval().requires_grad_(False), time.time() - t0


def fashion_vit(progress: bool = True):
    """The cached Fashion-MNIST ViT (trained on first use, a few minutes on 2 cores)."""
    from transformers import ViTForImageClassification

    d = vit_dir()
    if (d / "model.safetensors").exists():
        try:
            return ViTForImageClassification.from_pretrained(str(d), local_files_only=True).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise EdgeError(f"the cached ViT in {d} is corrupt ({e}); delete that directory to retrain it") from None
    model, _ = train_fashion_vit(progress=progress)
    from edge.files import atomic_dir

    with atomic_dir(d, overwrite=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    return model


def accuracy(model, batches: list[dict], labels: torch.Tensor) -> float:
    from edge.arch import arch_for

    arch = arch_for(model)
    with torch.no_grad():
        pred = torch.cat([arch.output(model, b).argmax(-1) for b in batches])
    return float((pred == labels).float().mean())
