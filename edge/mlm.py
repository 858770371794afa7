"""The small BERT masked-language model edge trains from scratch on the Austen training split (the
V-cycle's text job): MiniLM's WordPiece tokenizer, 4 layers of hidden 256, BERT's 80/10/10 masking of
15 % of the tokens; validation is the MLM loss on a fixed masking of passages of the test split."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.vcycle import TASKS, Task

MASK_RATE = 0.15


def mlm_config(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=128, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def mask_tokens(ids: torch.Tensor, real: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of (B, T) ids: 15 % of the real, non-special tokens are chosen (at least one per
    batch); of those 80 % become [MASK], 10 % a random token, 10 % stay. -> (inputs, chosen (B, T) bool)."""
    candidates = real & ~special
    chosen = (torch.rand(ids.shape, generator=gen) < MASK_RATE) & candidates
    if not chosen.any():
        chosen.view(-1)[torch.nonzero(candidates.view(-1))[0]] = True
    r = torch.rand(ids.shape, generator=gen)
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, mask_id), ids)
    rand_tok = torch.randint(0, vocab, ids.shape, generator=gen)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, inputs)
    return inputs, chosen


class AustenMlm(Task):
    name = "austen-mlm"
    metric = "mlm_loss"
    higher_is_better = False
    lr = 1e-3
    weight_decay = 0.01

    def __init__(self, hidden: int = 256, layers: int = 4, heads: int = 4, batch_size: int = 64,
                 eval_passages: int = 512):
        self.sizes = (hidden, layers, heads)
        self.batch_size, self.eval_passages = batch_size, eval_passages
        self._data = None

    def _load(self):
        if self._data is None:
            import random

            from edge.data import austen_passages, batches
            from edge.pretrained import default_model_dir, load_tokenizer

            tok = load_tokenizer(default_model_dir())
            passages = austen_passages()
            train = passages.split("train").texts
            test = passages.split("test").texts
            test = [test[i] for i in sorted(random.Random(0).sample(range(len(test)), min(self.eval_passages, len(test))))]
            enc = tok(train, truncation=True, max_length=128)["input_ids"]
            self._data = (tok, enc, batches(tok, test, 64))
        return self._data

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self._load()[1]) / self.batch_size)

    def model(self, seed: int) -> nn.Module:
        from transformers import BertForMaskedLM

        tok = self._load()[0]
        return BertForMaskedLM(mlm_config(len(tok), *self.sizes))

    def _masked(self, batch: dict, gen: torch.Generator) -> dict:
        tok = self._load()[0]
        ids, real = batch["input_ids"], batch["attention_mask"].bool()
        special = torch.isin(ids, torch.tensor(tok.all_special_ids))
        inputs, chosen = mask_tokens(ids, real, special, tok.mask_token_id, len(tok), gen)
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "chosen": chosen, "labels": ids}

    def stream(self, seed: int):
        tok, enc, _ = self._load()
        gen = torch.Generator().manual_seed(seed)
        pad = tok.pad_token_id
        while True:
            perm = torch.randperm(len(enc), generator=gen).tolist()
            for i in range(0, len(perm) - self.batch_size + 1, self.batch_size):
                rows = [enc[j] for j in perm[i: i + self.batch_size]]
                t = max(map(len, rows))
                ids = torch.tensor([r + [pad] * (t - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in rows])
                yield self._masked({"input_ids": ids, "attention_mask": mask}, gen)

    def loss(self, model: nn.Module, batch: dict, reduction: str = "mean") -> torch.Tensor:
        h = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        sel = batch["chosen"]
        logits = model.cls(h[sel])  # the decoder on the masked tokens only: (N, V), not (B, T, V)
        return F.cross_entropy(logits, batch["labels"][sel], reduction=reduction)

    def save(self, model: nn.Module, directory) -> None:
        super().save(model, directory)
        self._load()[0].save_pretrained(str(directory))  # its tokenizer beside it: a model directory edge reads

    def evaluate(self, model: nn.Module) -> float:
        gen = torch.Generator().manual_seed(1234)  # the same masking for every evaluation
        total, count = 0.0, 0
        for b in self._load()[2]:
            m = self._masked(b, gen)
            total += float(self.loss(model, m, "sum"))
            count += int(m["chosen"].sum())
        return total / count


TASKS.register(AustenMlm.name)(AustenMlm())
