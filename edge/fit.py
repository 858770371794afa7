"""The transforms fitted on passages of text (edge.data.Passages: Jane Austen's novels, or a user's
own lines), split as the benchmarks split them: ACMs, exit heads and routers train on the train
split, budgets are set on calib, a task head (and a classifier's exits) is fitted on the labelled
probe split, and test is held out for evaluation. These are the verbs the `edge` command calls.

    import edge
    src = edge.load_model()                                   # MiniLM and its tokenizer
    p = edge.read_passages()                                  # the novels, labelled
    clf = edge.fit_head(src.model, src.tokenizer, p)          # which novel: a classifier
    m = edge.fit_exits(clf, src.tokenizer, p, edge.ExitConfig(after=[2, 3, 4, 5]))
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.arch import arch_for
from edge.budget import set_budget_
from edge.convert import DistillConfig, acmize
from edge.data import Passages, batches
from edge.depth import add_exits, add_skips
from edge.errors import EdgeError
from edge.evaluate import evaluate, teacher_probe
from edge.head import add_head, head_of

TRAIN_BATCH, EVAL_BATCH = 32, 64  # passages per batch: training steps, and passes without gradients


def _check_limit(name: str, v) -> None:
    if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        raise EdgeError(f"{name} must be an integer >= 1 (or None: all), got {v!r}")


def fit_acms(model: nn.Module, tokenizer, passages: Passages, config, distill=None, train_limit: int | None = None,
             calib_limit: int | None = 512, progress: bool = True) -> nn.Module:
    """edge.acmize on the train split (its first `train_limit` passages), the budget knob set on the
    first `calib_limit` passages of calib."""
    return _converted(acmize, model, tokenizer, passages, config, distill, train_limit, calib_limit, progress)


def fit_moe(model: nn.Module, tokenizer, passages: Passages, config, distill=None, train_limit: int | None = None,
            calib_limit: int | None = 512, progress: bool = True) -> nn.Module:
    """edge.moefy on the train split (its first `train_limit` passages), the budget knob set on the
    first `calib_limit` passages of calib."""
    from edge.moe_convert import moefy

    return _converted(moefy, model, tokenizer, passages, config, distill, train_limit, calib_limit, progress)


def _converted(convert, model, tokenizer, passages: Passages, config, distill, train_limit, calib_limit, progress):
    _check_limit("train_limit", train_limit)
    _check_limit("calib_limit", calib_limit)
    train = passages.split("train").texts[:train_limit]
    calib = batches(tokenizer, passages.split("calib").texts[:calib_limit], EVAL_BATCH)
    return convert(model, config, batches(tokenizer, train, TRAIN_BATCH), calib, distill or DistillConfig(),
                   progress=progress)


def evaluate_text(model: nn.Module, original: nn.Module, tokenizer, passages: Passages,
                  limit: int | None = None, calib_limit: int | None = 512) -> dict:
    """edge.evaluate.evaluate on the test split (its first `limit` passages), the knob curve set on the
    first `calib_limit` calibration passages, as JSON-able numbers."""
    _check_limit("calib_limit", calib_limit)
    return {k: v for k, v in evaluate(model, original, tokenizer, passages, limit=limit, calib_limit=calib_limit).items()
            if k != "probe"}


def fit_head(model: nn.Module, tokenizer, passages: Passages, teacher: nn.Module | None = None) -> nn.Module:
    """edge.add_head with the linear probe fitted on the embeddings of the labelled probe split (as
    edge.evaluate fits it): the model becomes a classifier of the passages' labels. teacher: whose
    embeddings the probe is fitted on (default `model`; bench/depth.py fits it on the original of an
    ACM model)."""
    if passages.labels is None:
        raise EdgeError("a task head is fitted on labelled passages: Jane Austen's novels (the default) or a text "
                        "file with its labels file (one label per line)")
    seen = set(passages.split("probe").labels)
    missing = [n for i, n in enumerate(passages.label_names) if i not in seen]
    if missing:
        raise EdgeError(f"the probe split (lines 15-17 of every 20) has no passage of class {', '.join(missing)}; "
                        "the head is fitted on it: give every class more passages")
    probe = teacher_probe(teacher if teacher is not None else model, tokenizer, passages, EVAL_BATCH)
    return add_head(model, probe.as_linear(), passages.label_names)


def fit_exits(model: nn.Module, tokenizer, passages: Passages, config, use_labels: bool | None = None,
              progress: bool = True) -> nn.Module:
    """edge.add_exits on passages. A classifier's exits (a model with a task head) given labelled
    passages learn the labels on the probe split, the split its head was fitted on (as
    bench/depth.py); other exits learn to reproduce the final output on the train split.
    use_labels: None: the labels when the model is a classifier and the passages have them;
    True: the labels (an error if there are none); False: the final output."""
    classifier = arch_for(model).output_kind(model) == "logits"
    if use_labels is None:
        use_labels = classifier and passages.labels is not None
    if not use_labels:
        texts = passages.split("train").texts[: max(1, config.steps) * TRAIN_BATCH]  # (add_exits reads `steps` batches)
        return add_exits(model, config, batches(tokenizer, texts, TRAIN_BATCH), progress)
    if passages.labels is None:
        raise EdgeError("exits that learn the labels need labelled passages: a text file with its labels file")
    if not classifier:
        raise EdgeError("labels train a classifier's exits, but this model outputs embeddings; put the task's head "
                        "on it first (edge add-head)")
    probe = passages.split("probe")
    data = batches(tokenizer, probe.texts, EVAL_BATCH)
    y = torch.tensor(_classes(model, probe)).split([len(b["input_ids"]) for b in data])
    return add_exits(model, config, data, progress, labels=list(y))


def _classes(model: nn.Module, passages: Passages) -> list[int]:
    """The passages' labels as the model's class indices: matched by name to its task head's classes
    (a head without names: labels that are the numbers 0..C-1)."""


    head = head_of(model)
    names = head[1] if head is not None else ()
    classes = arch_for(model).output_dim(model)
    if names:
        unknown = sorted(set(passages.label_names) - set(names))
        if unknown:
            raise EdgeError(f"labels {', '.join(unknown[:5])} are not among the model's classes ({', '.join(names[:10])})")
        index = [names.index(n) for n in passages.label_names]
    else:
        if not all(n.isdigit() and int(n) < classes for n in passages.label_names):
            raise EdgeError(f"the model's classes have no names: its labels must be the numbers 0..{classes - 1}")
        index = [int(n) for n in passages.label_names]
    return [index[y] for y in passages.labels]


def fit_skips(model: nn.Module, tokenizer, passages: Passages, config, progress: bool = True) -> nn.Module:
    """edge.add_skips, router-tuned on the train split (its first config.samples passages)."""
    texts = passages.split("train").texts[: config.samples]
    return add_skips(model, config, batches(tokenizer, texts, TRAIN_BATCH), progress)


def fit_prune(model: nn.Module, tokenizer, passages: Passages, config, progress: bool = True) -> nn.Module:
    """edge.prune, its units scored on the first config.sequences passages of the calib split (and
    refit on the first refit_sequences)."""
    from edge.pruning import prune

    texts = passages.split("calib").texts[: max(config.sequences, config.refit_sequences if config.refit else 0)]
    return prune(model, config, batches(tokenizer, texts, EVAL_BATCH), progress)


def fit_budget_(model: nn.Module, original: nn.Module, tokenizer, passages: Passages, budget: float,
                calib_limit: int | None = 512, progress: bool = False) -> dict:
    """edge.set_budget_ on the first `calib_limit` passages of the calib split: the exit threshold,
    router threshold and ACM budget with the best agreement with `original` within `budget` of its
    FLOPs, set in place. Returns the chosen row and the whole sweep."""
    _check_limit("calib_limit", calib_limit)
    calib = batches(tokenizer, passages.split("calib").texts[:calib_limit], EVAL_BATCH)
    return set_budget_(model, original, budget, calib, progress=progress)
