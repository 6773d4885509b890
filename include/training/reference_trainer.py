"""The reference fine-tune: pretrained token embeddings plus a classifier head, trained on ticket text.

It starts from real pretrained weights that ship inside a PyPI wheel: WordLlama's ``l2_supercat`` token
embeddings (32,000 x 256, distilled from Llama 2's) and its tokenizer, read straight from the installed
package, so nothing is downloaded at run time. The model is the embedding bag WordLlama itself uses (mean
of the token embeddings) followed by a softmax classifier; fine-tuning updates the classifier and the
embedding rows of the tokens it sees, with numpy on the CPU (seconds to a minute for the demo).

It learns the demo's support tickets: ``subject`` + ``body`` -> ``priority`` (:func:`fit`, what train.py calls).
Several ranks train one model together: each reads its share of the files and the gradients are averaged
across ranks every step (:class:`TorchCollective`, gloo; torch is needed only then). An organisation's own
trainer replaces this module (see train.py's docstring).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("reference_trainer")

BASE_MODEL = "wordllama/l2_supercat_256"
# What fit() learns from the dataset (the demo's contract, include/contracts/public.tickets.yaml).
TABLE, KEY_COLUMN, TEXT_COLUMNS, LABEL_COLUMN = "public.tickets", "ticket_id", ("subject", "body"), "priority"
# The zero-shot baseline matches a text against each class's name, so the priorities 1..4 get words.
PRIORITY_NAMES = {1: "urgent", 2: "high priority", 3: "normal", 4: "low priority"}


class LocalCollective:
    """One rank: reductions are the identity."""

    world_size = 1
    rank = 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def min(self, value: int) -> int:
        return value


class TorchCollective:
    """Several ranks (torchrun, or srun with MASTER_ADDR/MASTER_PORT set): reductions over torch.distributed."""

    def __init__(self, rank: int, world_size: int):
        import torch.distributed as dist  # optional: needed only with several ranks

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
        self.dist, self.rank, self.world_size = dist, rank, world_size

    def sum(self, values: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(values))
        self.dist.all_reduce(tensor)
        return tensor.numpy()

    def min(self, value: int) -> int:
        import torch

        tensor = torch.tensor([value])
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.MIN)
        return int(tensor.item())


def fit(job) -> dict[str, Any]:
    """train.py's trainer interface: the tickets of this rank's share of the version, into ``job.output_dir``."""
    rows = job.read(TABLE, [KEY_COLUMN, *TEXT_COLUMNS, LABEL_COLUMN]).to_pylist()
    labelled = [row for row in rows if row[LABEL_COLUMN] in PRIORITY_NAMES]
    if len(labelled) < len(rows):
        job.log(f"{len(rows) - len(labelled)} of {len(rows)} rows have no {LABEL_COLUMN} in 1..4: left out")
    collective = LocalCollective() if job.rank.world_size == 1 else TorchCollective(job.rank.rank,
                                                                                    job.rank.world_size)
    return train(
        texts=["\n".join(row[column] or "" for column in TEXT_COLUMNS) for row in labelled],
        labels=[PRIORITY_NAMES[row[LABEL_COLUMN]] for row in labelled],
        keys=[str(row[KEY_COLUMN]) for row in labelled],
        output_dir=job.output_dir,
        hyperparameters=job.hyperparameters,
        checkpoint_dir=job.checkpoint_dir,
        label_names=sorted(PRIORITY_NAMES.values()),
        on_progress=job.log,
        collective=collective,
    )


@dataclass(frozen=True)
class Hyperparameters:
    """What a run may tune; unknown keys are refused, so a typo is not silently ignored."""

    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 0.02
    embedding_learning_rate: float = 0.5
    max_tokens: int = 96
    holdout_fraction: float = 0.2
    seed: int = 7
    checkpoint_every_steps: int = 200

    @classmethod
    def parse(cls, values: dict[str, Any] | None) -> Hyperparameters:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        params = cls(**{key: type(getattr(cls, key))(value) for key, value in values.items()})
        problems = [name for name in ("epochs", "batch_size", "max_tokens", "checkpoint_every_steps")
                    if getattr(params, name) < 1]
        problems += [name for name in ("learning_rate", "embedding_learning_rate") if getattr(params, name) <= 0]
        if not 0 < params.holdout_fraction < 1:
            problems.append("holdout_fraction")
        if problems:
            raise ValueError(f"hyperparameters out of range: {problems} (counts >= 1, rates > 0, 0 < holdout < 1)")
        return params


def check_hyperparameters(values: dict[str, Any] | None) -> dict[str, Any]:
    """train.py's optional interface: refuse bad hyperparameters before anything launches (preflight)."""
    return asdict(Hyperparameters.parse(values))


@dataclass
class TrainingState:
    """Everything a restarted run needs to continue exactly where the last checkpoint left it."""

    embedding: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    moments: dict[str, np.ndarray] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0


def load_base_model():
    """WordLlama's pretrained token embeddings and tokenizer, from the installed wheel (no download)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    package = resources.files("wordllama")
    embedding = load_file(str(package / "weights" / "l2_supercat_256.safetensors"))["embedding.weight"]
    tokenizer_path = package / "tokenizers" / "l2_supercat_tokenizer_config.json"
    return embedding.astype(np.float32), Tokenizer.from_file(str(tokenizer_path)), Path(str(tokenizer_path))


def held_out(key: str, fraction: float) -> bool:
    """A row's split, from its key alone: the same on every rank, every restart and every version."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _token_ids(tokenizer, texts: Sequence[str], max_tokens: int) -> list[np.ndarray]:
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(encoding.ids[:max_tokens] or [0], dtype=np.int64) for encoding in encodings]


def _pool(embedding: np.ndarray, ids: list[np.ndarray]) -> np.ndarray:
    """The mean token embedding of each text, for a whole batch at once."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.add.reduceat(embedding[np.concatenate(ids)], starts, axis=0) / lengths[:, None]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _accuracy(predicted: np.ndarray, expected: np.ndarray, collective=None) -> float:
    """The share of right predictions, over every rank's rows."""
    right, total = (collective or LocalCollective()).sum(np.array([(predicted == expected).sum(), len(expected)]))
    return float(right / total) if total else 0.0


def _adam(state: TrainingState, name: str, param: np.ndarray, grad: np.ndarray, rate: float) -> None:
    beta1, beta2 = 0.9, 0.999
    m = state.moments.setdefault(f"{name}.m", np.zeros_like(param))
    v = state.moments.setdefault(f"{name}.v", np.zeros_like(param))
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    t = state.step + 1
    param -= rate * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + 1e-8)


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    keys: Sequence[str],
    output_dir: Path,
    hyperparameters: dict[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    label_names: Sequence[str] | None = None,
    on_progress: Callable[[str], None] = print,
    collective: LocalCollective | TorchCollective | None = None,
) -> dict[str, Any]:
    """
    Fine-tune on ``texts`` -> ``labels`` and write the model to ``output_dir``; return the metrics.

    :param keys: Each row's primary key; it decides the held-out split.
    :param checkpoint_dir: Resume from the newest checkpoint here, and write new ones; none, no resume.
    :param label_names: The label classes (in a fixed order); those found in ``labels`` if None.
    :param collective: The ranks that train together (each passing its own rows); one rank if None.
    """
    collective = collective or LocalCollective()
    params = Hyperparameters.parse(hyperparameters)
    started = time.monotonic()
    classes = sorted(label_names or set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least two label classes to learn from, found {classes}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the label classes {classes}")
    base_embedding, tokenizer, tokenizer_path = load_base_model()
    ids = _token_ids(tokenizer, texts, params.max_tokens)
    target = np.asarray([index[label] for label in labels], dtype=np.int64)
    holdout = np.asarray([held_out(key, params.holdout_fraction) for key in keys])
    train_rows, test_rows = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    total_train, total_test = (int(n) for n in collective.sum(np.array([len(train_rows), len(test_rows)])))
    if not total_train or not total_test:
        raise ValueError(f"{len(texts)} rows are too few to hold {params.holdout_fraction:.0%} out for testing")
    on_progress(f"fine-tuning {BASE_MODEL} on {total_train} rows, {total_test} held out, "
                f"{len(classes)} classes {classes}")

    state = _resume(checkpoint_dir) if checkpoint_dir else None
    if state is None:
        rng = np.random.default_rng(params.seed)
        state = TrainingState(embedding=base_embedding.copy(),
                              weight=rng.normal(0, 0.01, (base_embedding.shape[1], len(classes))).astype(np.float32),
                              bias=np.zeros(len(classes), dtype=np.float32))
    else:
        on_progress(f"resumed from the checkpoint at epoch {state.epoch}, step {state.step}")
    # Every rank takes the same number of steps (each step averages all ranks' gradients).
    batches_per_epoch = collective.min(-(-len(train_rows) // params.batch_size))
    while state.epoch < params.epochs:
        order = np.random.default_rng(params.seed + state.epoch).permutation(train_rows)
        first = state.step - state.epoch * batches_per_epoch  # a resumed epoch skips the batches it has done
        for batch_number in range(first, batches_per_epoch):
            batch = order[batch_number * params.batch_size:(batch_number + 1) * params.batch_size]
            _train_step(state, [ids[row] for row in batch], target[batch], params, collective)
            state.step += 1
            # The ranks hold the same state; rank 0 writes it to the shared checkpoint folder.
            if checkpoint_dir and collective.rank == 0 and state.step % params.checkpoint_every_steps == 0:
                _checkpoint(checkpoint_dir, state)
        state.epoch += 1
        accuracy = _accuracy(_predict(state, [ids[row] for row in test_rows]), target[test_rows], collective)
        on_progress(f"epoch {state.epoch}/{params.epochs}: held-out accuracy {accuracy:.3f}")
        if checkpoint_dir and collective.rank == 0:
            _checkpoint(checkpoint_dir, state)

    test_ids = [ids[row] for row in test_rows]
    majority = collective.sum(np.bincount(target[train_rows], minlength=len(classes))).argmax()
    metrics = {
        "base_model": BASE_MODEL,
        "rows": {"train": total_train, "held_out": total_test},
        "ranks": collective.world_size,
        "classes": classes,
        "accuracy": _accuracy(_predict(state, test_ids), target[test_rows], collective),
        "baselines": {
            "majority": _accuracy(np.full(len(test_rows), majority), target[test_rows], collective),
            "zero_shot": _accuracy(_zero_shot(base_embedding, tokenizer, classes, test_ids, params),
                                   target[test_rows], collective),
        },
        "hyperparameters": asdict(params),
        "seconds": round(time.monotonic() - started, 1),
    }
    _write_model(output_dir, state, classes, params, tokenizer_path, metrics)
    return metrics


def _train_step(state: TrainingState, ids: list[np.ndarray], target: np.ndarray, params: Hyperparameters,
                collective: LocalCollective | TorchCollective) -> None:
    pooled = _pool(state.embedding, ids)
    probabilities = _softmax(pooled @ state.weight + state.bias)
    probabilities[np.arange(len(target)), target] -= 1.0
    error = probabilities / len(target)  # d(mean cross-entropy)/d(logits)
    grad_pooled = error @ state.weight.T
    ranks = collective.world_size
    _adam(state, "weight", state.weight, collective.sum(pooled.T @ error) / ranks, params.learning_rate)
    _adam(state, "bias", state.bias, collective.sum(error.sum(axis=0)) / ranks, params.learning_rate)
    # The embedding's gradient is sparse (only the batch's tokens): plain SGD on those rows.
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    grads = np.repeat(grad_pooled / lengths[:, None], lengths, axis=0)
    tokens = np.concatenate(ids)
    # Sum each token's gradients once (np.add.at row by row is ~10x slower), then update those rows only.
    order = np.argsort(tokens, kind="stable")
    unique_tokens, starts = np.unique(tokens[order], return_index=True)
    token_grads = np.add.reduceat(grads[order], starts, axis=0)
    if ranks > 1:  # the ranks saw different tokens: average over the whole table, then update what any touched
        dense = np.zeros_like(state.embedding)
        dense[unique_tokens] = token_grads
        dense = collective.sum(dense) / ranks
        unique_tokens = np.flatnonzero(np.any(dense != 0, axis=1))
        token_grads = dense[unique_tokens]
    state.embedding[unique_tokens] -= params.embedding_learning_rate * token_grads


def _predict(state: TrainingState, ids: list[np.ndarray]) -> np.ndarray:
    return (_pool(state.embedding, ids) @ state.weight + state.bias).argmax(axis=1)


def _zero_shot(embedding, tokenizer, classes, ids, params) -> np.ndarray:
    """The pretrained model without training: each text goes to the class whose name it is closest to."""
    names = _pool(embedding, _token_ids(tokenizer, [name.replace("_", " ") for name in classes], params.max_tokens))
    texts = _pool(embedding, ids)
    names /= np.linalg.norm(names, axis=1, keepdims=True) + 1e-9
    texts /= np.linalg.norm(texts, axis=1, keepdims=True) + 1e-9
    return (texts @ names.T).argmax(axis=1)


def _checkpoint(directory: Path, state: TrainingState) -> None:
    """Write a checkpoint whole, then name it in ``latest.json``: a crash mid-write leaves the last one."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}.safetensors"
    tensors = {"embedding": state.embedding, "weight": state.weight, "bias": state.bias,
               **{f"moment.{key}": value for key, value in state.moments.items()}}
    save_file(tensors, str(directory / f".{name}.partial"), metadata={"epoch": str(state.epoch),
                                                                         "step": str(state.step)})
    (directory / f".{name}.partial").rename(directory / name)
    (directory / ".latest.partial").write_text(json.dumps({"checkpoint": name}))
    (directory / ".latest.partial").rename(directory / "latest.json")
    for old in sorted(directory.glob("step-*.safetensors"))[:-2]:
        old.unlink()


def _resume(directory: Path) -> TrainingState | None:
    from safetensors import safe_open

    latest = directory / "latest.json"
    if not latest.exists():
        return None
    path = directory / json.loads(latest.read_text())["checkpoint"]
    with safe_open(str(path), framework="np") as checkpoint:
        meta = checkpoint.metadata()
        tensors = {key: checkpoint.get_tensor(key) for key in checkpoint.keys()}  # noqa: SIM118
    return TrainingState(
        embedding=tensors["embedding"], weight=tensors["weight"], bias=tensors["bias"],
        moments={key.removeprefix("moment."): value for key, value in tensors.items() if key.startswith("moment.")},
        epoch=int(meta["epoch"]), step=int(meta["step"]))


def _write_model(directory: Path, state, classes, params, tokenizer_path: Path, metrics: dict) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({"embedding.weight": state.embedding.astype(np.float16), "classifier.weight": state.weight,
               "classifier.bias": state.bias}, str(directory / "model.safetensors"))
    (directory / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())
    config = {"base_model": BASE_MODEL, "architecture": "mean-pooled token embeddings + softmax classifier",
              "classes": classes, "max_tokens": params.max_tokens, "embedding_dim": int(state.embedding.shape[1])}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
