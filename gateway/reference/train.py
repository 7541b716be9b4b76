"""Train a reference model: ``python -m gateway.reference.train --size small|large --out DIR``.

Recipe (see ``gateway/reference/README.md``): a GPT-2 with a character vocabulary, trained on an
endless stream of reference items drawn from a seeded generator (never an item of a shipped task
set), loss only on the answer characters and ``<eos>``, AdamW with linear warmup and cosine decay,
gradient clipping. Deterministic on CPU for a given seed, step count and thread count:
``--minutes`` only decides the step count (timed on the first steps, before the warmup ends, so the
schedule up to then does not depend on it); ``training.json`` records the steps, and
``--steps N`` replays the run exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.reference.evaluate import encode, score_items, summarize
from gateway.reference.tasks import (
    FAMILIES,
    LEVELS,
    ReferenceItem,
    generate_split,
    reference_splits,
    sample_training_item,
)
from gateway.reference.tokenizer import BOS, EOS, MAX_LENGTH, PAD, build_tokenizer, vocabulary

VALIDATION_SEED = 3003
CALIBRATION_STEPS = 60
CALIBRATION_SKIP = 10
"""Calibration times steps 11..60 (the first steps are slower)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    n_layer: int
    n_embd: int
    n_head: int
    lr: float
    batch_size: int
    warmup_steps: int
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    position_init: str = "random"
    """``random`` (GPT-2 normal init) or ``sinusoidal`` (sine/cosine table at the same RMS)."""
    level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    family_weights: tuple[float, ...] = (2.0, 2.0, 1.0)


RECIPES: Mapping[str, Recipe] = MappingProxyType(
    {
        "small": Recipe(
            n_layer=2,
            n_embd=64,
            n_head=4,
            lr=3e-3,
            batch_size=64,
            warmup_steps=100,
            position_init="sinusoidal",
            family_weights=(3.0, 3.0, 1.0),
        ),
        "large": Recipe(
            n_layer=4,
            n_embd=128,
            n_head=4,
            lr=2e-3,
            batch_size=64,
            warmup_steps=200,
            position_init="sinusoidal",
            family_weights=(3.0, 3.0, 1.0),
        ),
    }
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget")
    parser.add_argument("--steps", type=int, default=None, help="exact steps (overrides minutes)")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    parser.add_argument("--data-seed", type=int, default=None, help="default: seed + 1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from this model directory (a new warmup + cosine cycle; the recipe's "
        "shape must match)",
    )
    parser.add_argument("--eval-every", type=int, default=0, help="0: ten evaluations per run")
    for field_name in ("n_layer", "n_embd", "n_head", "batch_size", "warmup_steps"):
        parser.add_argument("--" + field_name.replace("_", "-"), type=int, default=None)
    for field_name in ("lr", "weight_decay"):
        parser.add_argument("--" + field_name.replace("_", "-"), type=float, default=None)
    parser.add_argument("--position-init", choices=("random", "sinusoidal"), default=None)
    parser.add_argument("--level-weights", type=str, default=None, help="e.g. 1,1,2,3,3")
    parser.add_argument("--family-weights", type=str, default=None, help="add,mul,sort: e.g. 2,2,1")
    return parser.parse_args(argv)


def recipe_from(args: argparse.Namespace) -> Recipe:
    fields = asdict(RECIPES[args.size])
    for name in (
        "n_layer",
        "n_embd",
        "n_head",
        "batch_size",
        "warmup_steps",
        "lr",
        "weight_decay",
        "position_init",
    ):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for name, count in (("level_weights", len(LEVELS)), ("family_weights", len(FAMILIES))):
        text = getattr(args, name)
        if text:
            weights = tuple(float(w) for w in text.split(","))
            if len(weights) != count or min(weights) < 0 or not sum(weights):
                raise SystemExit(f"--{name.replace('_', '-')} needs {count} weights, not all 0")
            fields[name] = weights
    return Recipe(**fields)


def build_model(recipe: Recipe, seed: int) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = vocabulary()
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=MAX_LENGTH,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if recipe.position_init == "sinusoidal":
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(sinusoidal_table(MAX_LENGTH, recipe.n_embd))
    elif recipe.position_init != "random":
        raise SystemExit(f"unknown position init {recipe.position_init!r}")
    model.generation_config.pad_token_id = vocab[PAD]
    model.generation_config.eos_token_id = vocab[EOS]
    model.generation_config.bos_token_id = vocab[BOS]
    return model


def sinusoidal_table(positions: int, width: int, rms: float = 0.02) -> Any:
    """The transformer sine/cosine position table, scaled to GPT-2's init RMS."""
    import torch

    position = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(positions, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table * (rms * math.sqrt(2.0))


def make_batch(items: Sequence[ReferenceItem]) -> tuple[Any, Any]:
    """Input ids ``prompt answer <eos>`` (right-padded) and labels on answer + ``<eos>`` only."""
    import torch

    vocab = vocabulary()
    rows = [(encode(i.prompt), [*encode(i.answer), vocab[EOS]]) for i in items]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), vocab[PAD], dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(rows):
        sequence = prompt + answer
        ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt) : len(sequence)] = torch.tensor(answer)
    return ids, labels


def learning_rate(step: int, total: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = min(1.0, (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return recipe.lr * (recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine)


def make_optimizer(model: Any, recipe: Recipe) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-8)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    recipe = recipe_from(args)
    data_seed = args.seed + 1 if args.data_seed is None else args.data_seed
    splits = reference_splits()
    shipped = [i.prompt for items in splits.values() for i in items]
    # Monitoring only (never used to pick a checkpoint); drawn from the training distribution.
    validation = generate_split(VALIDATION_SEED, per_slice=20, exclude=shipped)
    exclude = frozenset(shipped)
    rng = random.Random(data_seed)
    model = build_model(recipe, args.seed)
    parent: dict[str, Any] | None = None
    if args.init_from is not None:
        model, parent = load_parent(args.init_from, model)
    optimizer = make_optimizer(model, recipe)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{args.size}: {parameters} parameters, recipe {recipe}")

    started = time.monotonic()
    total = args.steps
    eval_every = args.eval_every
    history: list[dict[str, Any]] = []
    step = 0
    warm = started
    while total is None or step < total:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total or 10**9, recipe)
        items = [
            sample_training_item(rng, recipe.level_weights, exclude, recipe.family_weights)
            for _ in range(recipe.batch_size)
        ]
        ids, labels = make_batch(items)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        step += 1
        if step == CALIBRATION_SKIP:
            warm = time.monotonic()
        if total is None and step == CALIBRATION_STEPS:
            total, eval_every = _calibrate(
                args, model, validation, (started, warm), step, eval_every
            )
            if step < recipe.warmup_steps <= total:
                log(f"budget {args.minutes} min → {total} steps, evaluating every {eval_every}")
            else:
                raise SystemExit("budget too small: the run would end inside the warmup")
        if eval_every and (step % eval_every == 0 or step == total):
            model.eval()
            summary = summarize(score_items(model, validation))
            history.append({"step": step, "loss": round(loss.item(), 4), "validation": summary})
            rate = learning_rate(step, total or 1, recipe)
            log(f"step {step}/{total} loss {loss.item():.4f} lr {rate:.2e} {summary}")
    wall = time.monotonic() - started
    model.eval()
    heldout = summarize(score_items(model, splits["heldout"]))
    log(f"done: {step} steps in {wall / 60:.1f} min; held-out {heldout}")
    return {
        "model": model,
        "recipe": recipe,
        "record": {
            "command": [sys.executable, "-m", "gateway.reference.train", *sys.argv[1:]],
            "replay": replay_arguments(args, recipe, step, data_seed),
            "init_from": parent,
            "size": args.size,
            "seed": args.seed,
            "data_seed": data_seed,
            "threads": args.threads,
            "steps": step,
            "minutes_budget": None if args.steps else args.minutes,
            "wall_seconds": round(wall, 1),
            "parameters": parameters,
            "recipe": asdict(recipe),
            "validation_seed": VALIDATION_SEED,
            "heldout_accuracy": heldout,
            "validation_history": history,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }


def load_parent(directory: Path, fresh: Any) -> tuple[Any, dict[str, Any]]:
    """The model in ``directory`` (same shape as ``fresh``) and what its ``training.json`` says."""
    from transformers import GPT2LMHeadModel

    from gateway.kernel.digests import weights_sha256

    model = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True)
    shape = ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")
    if any(getattr(model.config, k) != getattr(fresh.config, k) for k in shape):
        raise SystemExit(f"{directory}: its config differs from this recipe's; pass the same shape")
    record_file = directory / "training.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    parent = {
        "weights_sha256": weights_sha256(directory),
        "training": {k: v for k, v in record.items() if k != "validation_history"},
    }
    return model, parent


def replay_arguments(args: argparse.Namespace, recipe: Recipe, steps: int, data_seed: int) -> str:
    """The arguments (after ``--out DIR``) that retrain exactly this model."""
    parts = [
        f"--size {args.size} --steps {steps} --seed {args.seed} --data-seed {data_seed}",
        f"--threads {args.threads} --n-layer {recipe.n_layer} --n-embd {recipe.n_embd}",
        f"--n-head {recipe.n_head} --lr {recipe.lr} --batch-size {recipe.batch_size}",
        f"--warmup-steps {recipe.warmup_steps} --weight-decay {recipe.weight_decay}",
        f"--position-init {recipe.position_init}",
        "--level-weights " + ",".join(f"{w:g}" for w in recipe.level_weights),
        "--family-weights " + ",".join(f"{w:g}" for w in recipe.family_weights),
    ]
    return " ".join(parts)


def _calibrate(
    args: argparse.Namespace,
    model: Any,
    validation: list[ReferenceItem],
    clock: tuple[float, float],
    step: int,
    eval_every: int,
) -> tuple[int, int]:
    """Steps that fit the ``--minutes`` budget, given the time per step and per evaluation."""
    started, warm = clock
    per_step = (time.monotonic() - warm) / (step - CALIBRATION_SKIP)
    model.eval()
    eval_start = time.monotonic()
    score_items(model, validation)
    per_eval = time.monotonic() - eval_start
    remaining = args.minutes * 60 - (time.monotonic() - started) - 12 * per_eval
    total = step + max(0, int(remaining / per_step))
    return total, eval_every or max(1, total // 10)


def save(result: dict[str, Any], out: Path) -> None:
    from gateway.kernel.digests import weights_sha256

    out.mkdir(parents=True, exist_ok=True)
    result["model"].save_pretrained(out, safe_serialization=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out, save_jinja_files=False)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = dict(result["record"])
    record["weights_sha256"] = weights_sha256(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    save(train(args), args.out)


if __name__ == "__main__":
    main()
