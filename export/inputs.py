"""Text -> what an export or an artifact takes: passages tokenized into the example input an export
traces, the calibration batches its budget levels are chosen on, and the numpy inputs of an exported
artifact (with its own tokenizer) that a preset's quality is measured on."""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from edge.arch import arch_for
from edge.data import Passages, batches
from edge.errors import EdgeError
from edge.pretrained import token_positions

TOKENS = 128  # the example input's token count by default
CALIB = 128  # calibration passages a budget level is chosen on by default


def example_input(model: nn.Module, tokenizer, passages: Passages, tokens: int = TOKENS) -> dict:
    """The export's example input: the first held-out (test) passage, padded to `tokens` tokens
    (the graph then takes 2..the model's token positions). A text model only."""
    arch = arch_for(model)
    if "input_ids" not in arch.inputs:
        raise EdgeError(f"an example input is made from text; for a {arch.name} model call "
                        "export.to_runtime(model, runtime, out, example) from Python with an example batch")
    if not (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 2):
        raise EdgeError(f"tokens must be an integer >= 2, got {tokens!r}")
    most = token_positions(model.config)
    if most is not None and tokens > most:
        raise EdgeError(f"tokens {tokens} is more than this model takes ({most} token positions)")
    text = passages.split("test").texts[0]
    return dict(tokenizer([text], padding="max_length", truncation=True, max_length=tokens, return_tensors="pt"))


def levels_from_text(model: nn.Module, original: nn.Module, tokenizer, passages: Passages,
                     budgets: tuple[float, ...], calib: int = CALIB) -> list[dict]:
    """export.budget_levels chosen on the first `calib` passages of the calib split."""
    from export.lower import budget_levels

    if not (isinstance(calib, int) and not isinstance(calib, bool) and calib >= 1):
        raise EdgeError(f"calib (calibration passages) must be an integer >= 1, got {calib!r}")
    return budget_levels(model, original, batches(tokenizer, passages.split("calib").texts[:calib], 32), tuple(budgets))


def artifact_inputs(artifact, passages: Passages, n: int) -> list[list[np.ndarray]]:
    """The first `n` held-out (test) passages tokenized with the artifact's own tokenizer (its
    tokenizer/ directory), each as the artifact's list of int64 inputs (1, tokens)."""
    from edge.pretrained import load_tokenizer
    from device.artifact import TOKENIZER

    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise EdgeError(f"the number of held-out passages must be an integer >= 1, got {n!r}")
    if "tokenizer" not in artifact.plan:
        raise EdgeError(f"{artifact.path} has no tokenizer to read text with; export it with `edge export`")
    tok = load_tokenizer(artifact.path / TOKENIZER)
    tokens = artifact.inputs()[0].shape[1]
    names = [s["name"] for s in artifact.plan["inputs"]]
    out = []
    for t in passages.split("test").texts[:n]:
        enc = tok([t], truncation=True, max_length=tokens, return_tensors="np")
        out.append([enc[k].astype("int64") for k in names])
    return out
