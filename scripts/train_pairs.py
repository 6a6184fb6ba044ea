"""Train the Fashion-MNIST pairs models of the zoo (issue 15): the same PairCNN on the
100-class pair task (fm_pairs100: class = 10*left + right) and on the 10-class "left item"
task (fm_pairs10), PGD-AT with train.fit, written as zoo checkpoints.

    python scripts/train_pairs.py [--n-train 20000 --epochs 2 --steps 2]

train.py's TrainConfig only knows its own datasets (and is moving into Hydra's ConfigStore),
so the recipe here trains on dataset=fashion_mnist and swaps in the pair images, labels and
number of classes; the checkpoint records the pair dataset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from one_line_errors import OneLineParser  # same folder

from marginbench import data as D
from marginbench.models.local import save_local_checkpoint
from marginbench.models.registry import NUM_CLASSES
from marginbench.models.sources import ZOO_DIR
from marginbench.train import TrainConfig, clean_accuracy, fit, pgd_accuracy

MODELS = {"fm_pairs100": "fashion_mnist_pairs", "fm_pairs10": "fashion_mnist_pairs_left"}


@dataclass
class PairTrainConfig(TrainConfig):
    classes: int = 100

    @property
    def num_classes(self) -> int:  # TrainConfig derives it from its own dataset table
        return self.classes


def split(name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = D._fashion_pair_arrays(name, D.DEBIAN_FASHION_MNIST, train=train, download=False)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def train_one(code: str, args) -> None:
    dataset = MODELS[code]
    cfg = PairTrainConfig(name=code, dataset="fashion_mnist", arch="pair_cnn", loss=args.loss, epochs=args.epochs,
                          eps="0.1", attack_steps=args.steps, n_train=args.n_train, seed=0,
                          classes=NUM_CLASSES[dataset], num_threads=args.threads).validate()
    torch.set_num_threads(args.threads)
    x, y = split(dataset, train=True)
    x, y = x[: args.n_train], y[: args.n_train]
    t0 = time.perf_counter()
    model, history = fit(cfg, x, y, torch.device("cpu"), log=print)
    train_seconds = time.perf_counter() - t0
    tx, ty = split(dataset, train=False)
    metrics = dict(train_seconds=round(train_seconds, 2), **history,
                   clean_acc=clean_accuracy(model, tx, ty, "cpu"),
                   pgd_acc=pgd_accuracy(model, tx[:1000], ty[:1000], 0.1, 20, "cpu", batch_size=500, seed=0),
                   pgd_eps=0.1, n_eval=1000)
    print(f"{code}: clean {metrics['clean_acc']:.4f}  PGD-20@0.1 {metrics['pgd_acc']:.4f}  {train_seconds:.0f}s")
    out = Path(args.out) / f"{code}.pt"
    save_local_checkpoint(out, model, arch="pair_cnn", num_classes=cfg.num_classes, dataset=dataset,
                          train_config={k: v for k, v in asdict(cfg).items()},
                          data={"dataset": dataset, "split": "train", "n_train": len(y), "seed": 0},
                          metrics=metrics)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("train_pairs", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=list(MODELS))
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="PGD steps of the training attack")
    p.add_argument("--loss", default="pgd")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ZOO_DIR))
    args = p.parse_args(argv)
    for code in args.models:
        train_one(code, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
