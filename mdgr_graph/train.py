"""One training loop and one evaluation routine for every model of the project.

:func:`fit` trains any :class:`~mdgr_graph.models.base.SequentialRecommender` with Adam,
early stopping on the validation metric, a kept best checkpoint and exact resumption;
:func:`evaluate` scores a split under the dataset's protocol.

Determinism: the shuffling and the dropout of epoch ``e`` come from generators seeded by
``(seed, e)``, and training negatives of epoch ``e`` are drawn from ``(seed, e)`` too, so
a resumed run repeats exactly what an uninterrupted one does (on CPU).

Both run data-parallel when a :mod:`torch.distributed` process group is initialised
(``torchrun``; see :mod:`mdgr_graph.distributed`): training batches are split over ranks
and gradients averaged by DistributedDataParallel, evaluation is sharded with metric sums
merged across ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from mdgr_graph import distributed
from mdgr_graph.data.dataset import SequenceDataset, SequenceLoader
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.data.protocols import ragged_ranges
from mdgr_graph.io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from mdgr_graph.io import atomic_write_bytes as atomic_write_bytes  # re-export (scripts)
from mdgr_graph.metrics import (
    MetricAccumulator,
    full_ranking_per_row,
    rank_of_target,
    window_metrics_per_row,
)
from mdgr_graph.models.base import SequentialRecommender

#: Validation metric that decides early stopping and the best checkpoint.
SELECTION_METRIC = {"paper": "auc/sampled", "loo": "ndcg@10/full"}


def selection_metric(model: SequentialRecommender, prepared: PreparedDataset) -> str:
    """The validation metric :func:`fit` selects on: :data:`SELECTION_METRIC` of the
    protocol, except ``auc/sampled`` under leave-one-out for a model that cannot rank the
    catalogue in one pass (:attr:`~mdgr_graph.models.base.SequentialRecommender.
    ranks_catalogue_in_one_pass`, e.g. MDGR with ``query="candidate"``)."""
    if prepared.protocol == "loo" and not model.ranks_catalogue_in_one_pass:
        return "auc/sampled"
    return SELECTION_METRIC[prepared.protocol]


@dataclass
class TrainConfig:
    """Options of :func:`fit`.

    Attributes:
        epochs: maximum number of epochs.
        patience: stop after this many epochs without validation gain.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: training sequences per batch.
        eval_batch_size: sequences per evaluation batch.
        device: ``cpu`` or ``cuda``.
        seed: seed of shuffling, dropout and negatives.
        out_dir: where checkpoints and the log go (None: keep nothing on disk).
        resume: continue from ``out_dir/last.pt`` if it exists (a :class:`RunDirError`
            if it was written for other data, another model or other options). Without
            it, a folder that already holds a run's files is refused.
        grad_clip: clip the gradient norm (None: no clipping).
        progress: show tqdm bars.
        deterministic: run with ``torch.use_deterministic_algorithms(True)`` (restored on
            return), so that a seed fixes every bit of the result on CPU even with
            several threads; without it, parallel reductions may differ in the last bit.
        loo_train_targets: leave-one-out training targets, ``"last"`` (always the
            third-last item) or ``"random"`` (a new cut point per user and epoch, as
            ComiRec); see :class:`~mdgr_graph.data.dataset.SequenceDataset`.
        loo_train_positives: under ``"random"``, the items after the cut point that are
            positives of a training example (1: the next item only).
        mask_seen: leave-one-out validation ranks the target against the items the user
            has not had before it (True, as RecBole) or against every item (False); see
            :func:`evaluate`.
        run_options: options of the run that ``repr(model)`` does not show (e.g. the
            model's constructor arguments), JSON-serialisable; stored in the checkpoints
            with the data fingerprint and compared on resume.
        find_unused_parameters: passed to DistributedDataParallel in a process group; set
            it for a model whose loss leaves some parameters unused (the project's models
            use all of theirs).
    """

    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    out_dir: str | None = None
    resume: bool = False
    grad_clip: float | None = 5.0
    progress: bool = True
    deterministic: bool = True
    find_unused_parameters: bool = False
    loo_train_targets: str = "last"
    loo_train_positives: int = 1
    mask_seen: bool = True
    run_options: dict[str, Any] | None = None


#: TrainConfig fields that decide the trained weights: stored in every checkpoint with the
#: data and the model, and compared on resume (epochs, patience, device, ... may change).
TRAIN_FINGERPRINT = ("seed", "batch_size", "lr", "weight_decay", "grad_clip",
                     "loo_train_targets", "loo_train_positives")
#: Files of a run in ``out_dir``; a fresh run refuses a folder that holds one of them.
RUN_FILES = ("last.pt", "best.pt", "log.jsonl")
#: Files written atomically into ``out_dir`` (their ``.NAME.*.tmp`` leftovers are removed).
ATOMIC_FILES = (*RUN_FILES, "config.json", "args.json")


class RunDirError(ValueError):
    """``out_dir`` does not belong to this run (another run's files, a checkpoint of other
    data or options), or one of its checkpoints cannot be read."""


@dataclass
class FitResult:
    best_epoch: int
    epochs: int
    train_seconds: float
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------- run folders
def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a checkpoint on the CPU; a :class:`RunDirError` naming the file
    when it is truncated or otherwise unreadable."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, UnpicklingError, RuntimeError, ...
        raise RunDirError(
            f"{path}: damaged checkpoint, cannot be read ({type(exc).__name__}: {exc}); "
            "remove it (a run can --resume from last.pt alone) or use another out_dir"
        ) from exc
    if not isinstance(ckpt, dict):
        raise RunDirError(f"{path}: not a checkpoint of this project "
                          f"(holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True))


def run_fingerprint(
    model: SequentialRecommender, prepared: PreparedDataset, config: TrainConfig
) -> dict[str, Any]:
    """What a run folder belongs to: the data (options, subsample and content digest; the
    log's path is left out, its content is in the digest), the model (``repr`` and
    ``config.run_options``) and the training options of :data:`TRAIN_FINGERPRINT`."""
    options = dict(prepared.meta["options"])
    options.pop("path", None)
    return _plain({
        "data": {"options": options, "subsample": prepared.meta.get("subsample"),
                 "sha256": prepared.digest()},
        "model": {"repr": repr(model), "options": config.run_options},
        "train": {name: getattr(config, name) for name in TRAIN_FINGERPRINT}
                 # the validation ranking picks the best epoch; recorded only when it is
                 # not the default, so the runs of earlier versions still resume
                 | ({} if config.mask_seen else {"mask_seen": False}),
    })


def fingerprint_differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """``'key.path: A in the checkpoint, B now'`` for every leaf where ``saved`` and
    ``now`` differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now)):
            out += fingerprint_differences(saved.get(key), now.get(key), f"{prefix}{key}.")
        return out
    if saved == now:
        return []
    if prefix.endswith("sha256."):
        return [f"{prefix[:-1]}: the data's content differs"]
    return [f"{prefix[:-1]}: {saved!r} in the checkpoint, {now!r} now"]


def _check_checkpoint(path: Path, ckpt: dict[str, Any], fingerprint: dict[str, Any],
                      parts: tuple[str, ...] = ("data", "model", "train")) -> None:
    """A :class:`RunDirError` when ``ckpt`` was written for another run than
    ``fingerprint`` (compared on ``parts``). Checkpoints of earlier versions carry only
    the model's ``repr`` (``model_repr``), or nothing; what they carry is compared."""
    model_repr = fingerprint["model"]["repr"]
    saved_repr = ckpt.get("model_repr")
    if "model" in parts and saved_repr is not None and saved_repr != model_repr:
        raise RunDirError(
            f"{path} was written by {saved_repr}, not by the model given ({model_repr}); "
            "resume it with that configuration, or use another out_dir or resume=False")
    saved = ckpt.get("fingerprint")
    if saved is None:
        return
    diffs = fingerprint_differences({p: saved.get(p) for p in parts},
                                    {p: fingerprint[p] for p in parts})
    if diffs:
        shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise RunDirError(
            f"{path} belongs to another run ({shown}); resume it with the options it was "
            "written with, or use another out_dir")


def _read_run_dir(out: Path, fingerprint: dict[str, Any], resume: bool) -> dict | None:
    """Rank 0's part of :func:`check_run_dir`: reads, never writes."""
    used = [name for name in RUN_FILES if (out / name).exists()]
    if not resume:
        if used:
            raise RunDirError(
                f"{out} already holds a run ({', '.join(used)}): continue it with --resume "
                "(resume=True), or choose another --out (out_dir) or remove those files; "
                "a new run never reuses an earlier run's files")
        return None
    ckpt = best = None
    if (out / "last.pt").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        _check_checkpoint(out / "last.pt", ckpt, fingerprint)
        for key in ("model", "state"):
            if key not in ckpt:
                raise RunDirError(f"{out / 'last.pt'}: not a training checkpoint (no {key!r})")
    if (out / "best.pt").is_file():
        best = load_checkpoint(out / "best.pt")
        _check_checkpoint(out / "best.pt", best, fingerprint)
    if ckpt is not None and ckpt["state"]["best_epoch"] >= 0:
        state = ckpt["state"]
        # best.pt is written before last.pt: one of an epoch after the checkpoint comes
        # from the interrupted epoch, which the resumed run repeats.
        if best is None or (best.get("epoch") != state["best_epoch"]
                            and best.get("epoch", -1) <= state["epoch"]):
            held = "is missing" if best is None else f"holds epoch {best.get('epoch')}"
            raise RunDirError(
                f"{out / 'best.pt'} {held}, but {out / 'last.pt'} records epoch "
                f"{state['best_epoch']} as the best: the folder was changed by hand or by "
                "another run; use another out_dir")
    return ckpt


def check_run_dir(
    model: SequentialRecommender, prepared: PreparedDataset, config: TrainConfig,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Check that ``config.out_dir`` may hold this run, before anything is written there.

    Without ``config.resume`` the folder must not hold ``last.pt``, ``best.pt`` or
    ``log.jsonl`` of an earlier run. With it, ``last.pt`` and ``best.pt`` must be readable
    and written for the same data, model and training options
    (:func:`run_fingerprint`), and ``best.pt`` must be the epoch ``last.pt`` records as
    the best. Returns ``last.pt``'s content (None: start at epoch 0). Raises
    :class:`RunDirError`. Reads on rank 0 only; every rank gets the same answer.
    ``fingerprint``: :func:`run_fingerprint` of these arguments when the caller has it
    already (it hashes every array of the data).
    """
    if config.out_dir is None:
        return None
    out = Path(config.out_dir)
    answer: tuple[str, Any] | None = None
    if distributed.is_main_process():
        try:
            if fingerprint is None:
                fingerprint = run_fingerprint(model, prepared, config)
            answer = ("ok", _read_run_dir(out, fingerprint, config.resume))
        except RunDirError as exc:
            answer = ("error", str(exc))
    # rank 0's answer reaches every rank, also on machines that do not share out_dir
    kind, value = distributed.broadcast_object(answer)
    if kind == "error":
        raise RunDirError(value)
    return value


# ---------------------------------------------------------------------- evaluation
def _seen_mask(seen: tuple[np.ndarray, np.ndarray], rows: Tensor, num_items: int) -> Tensor:
    """``[B, num_items + 1]``: True at the items each of ``rows`` has already seen.

    ``seen`` is :meth:`~mdgr_graph.data.prepare.PreparedDataset.seen_items` of the split
    and ``rows`` its examples (leave-one-out: one per user, so row == user).
    """
    ptr, items = seen
    rows = rows.cpu().numpy()
    row_of, index = ragged_ranges(ptr[rows], ptr[rows + 1])
    mask = torch.zeros(len(rows), num_items + 1, dtype=torch.bool)
    mask[torch.from_numpy(row_of), torch.from_numpy(items[index])] = True
    return mask


@torch.no_grad()
def full_ranking_ranks(
    model: SequentialRecommender, batch: Batch,
    seen: tuple[np.ndarray, np.ndarray] | None, num_items: int,
) -> tuple[Tensor, Tensor]:
    """Leave-one-out full ranking of one batch: the scores of every item ``[B, I + 1]``
    and the 0-based rank of each row's target ``[B]`` (:func:`~mdgr_graph.metrics.
    rank_of_target`; on the CPU), the items of ``seen`` (:meth:`~mdgr_graph.data.
    prepare.PreparedDataset.seen_items`; None: none) excluded."""
    scores = model.score_all(batch).float().cpu()
    exclude = None if seen is None else _seen_mask(seen, batch.sample.cpu(), num_items)
    return scores, rank_of_target(scores, batch.target.cpu(), exclude)


@torch.no_grad()
def evaluate(
    model: SequentialRecommender,
    prepared: PreparedDataset,
    split: str,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    max_batches: int | None = None,
    mask_seen: bool = True,
) -> dict[str, float]:
    """Metrics of ``model`` on ``split`` under the dataset's protocol.

    Paper: ``auc/sampled`` and ``recall@50/sampled`` per window, averaged. Leave-one-out:
    ``hr@K/full``, ``ndcg@K/full``, ``recall@K/full``, ``mrr/full`` over all items with
    the user's earlier items excluded (``mask_seen``; the target stays rankable even when
    it repeats one of them) or, with ``mask_seen=False``, over every item, and
    ``auc/sampled`` against the fixed sampled negatives (reported separately). A model
    that cannot rank the catalogue in one pass (``ranks_catalogue_in_one_pass`` False,
    the candidate as the query) gets only ``auc/sampled`` under leave-one-out: its full
    ranking would run one pass per item (re-rank a first stage's list instead,
    :func:`mdgr_graph.retrieval.rerank`).

    In a process group, rank ``r`` of ``W`` scores examples ``r, r + W, ...`` and every rank
    returns the metrics of the whole split (sums and counts merged across ranks).
    """
    model.eval()
    dataset = SequenceDataset(prepared, split)
    if distributed.is_distributed():
        dataset = dataset.index_select(
            torch.arange(distributed.rank(), len(dataset), distributed.world_size())
        )
    loader = SequenceLoader(dataset, batch_size=batch_size, shuffle=False)
    acc = MetricAccumulator()
    seen = prepared.seen_items(split) if prepared.protocol == "loo" and mask_seen else None
    full_ranking = model.ranks_catalogue_in_one_pass
    show = progress and distributed.is_main_process()
    for i, batch in enumerate(tqdm(loader, desc=f"eval {split}", disable=not show,
                                   leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        batch = batch.to(device)
        if prepared.protocol == "paper":
            scores = model.score_candidates(batch).float().cpu()
            acc.update_many(window_metrics_per_row(scores, batch.labels.cpu(), ks=(50,)))
        elif not full_ranking:
            sampled = model.score_candidates(batch).float().cpu()
            acc.update_many({"auc/sampled": window_metrics_per_row(
                sampled, batch.labels.cpu())["auc/sampled"]})
        else:
            scores, rank = full_ranking_ranks(model, batch, seen, prepared.num_items)
            acc.update_many(full_ranking_per_row(rank, ks=(10, 50)))
            sampled = torch.gather(scores, 1, batch.candidates.cpu())
            acc.update_many(
                {"auc/sampled": window_metrics_per_row(sampled, batch.labels.cpu())[
                    "auc/sampled"]}
            )
    return distributed.all_merge_metrics(acc).compute()


# ---------------------------------------------------------------------- training
def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, 2, epoch]).integers(2**62))


def _train_loader(dataset: SequenceDataset, config: TrainConfig, epoch: int) -> SequenceLoader:
    """Shuffled batches of epoch ``epoch``; in a process group, this rank's share of them."""
    if not distributed.is_distributed():
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch) + 1)
        return SequenceLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=gen)
    world = distributed.world_size()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} is the global batch and must be a multiple of "
            f"the {world} processes"
        )
    sampler = DistributedSampler(dataset, num_replicas=world, rank=distributed.rank(),
                                 shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch)
    return SequenceLoader(dataset, batch_size=config.batch_size // world, sampler=sampler)


def _train_epoch(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    dataset: SequenceDataset,
    config: TrainConfig,
    epoch: int,
    step: Callable[[Batch], Tensor] | None = None,
    max_batches: int | None = None,
    step_seconds: list[float] | None = None,
) -> float:
    """One pass over the training split; ``step(batch)`` gives the loss (default
    ``model.loss``; the DDP wrapper in a process group). Returns the mean loss.

    ``max_batches`` stops after that many batches; ``step_seconds``, when given, receives
    the wall time of each step (loading the batch included), as ``benchmarks/step_time.py``
    uses them."""
    model.train()
    step = model.loss if step is None else step
    dataset.set_epoch(epoch)
    torch.manual_seed(_epoch_seed(config.seed, epoch) + distributed.rank())
    loader = _train_loader(dataset, config, epoch)
    total, count = 0.0, 0
    show = config.progress and distributed.is_main_process()
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not show, leave=False,
               total=len(loader) if max_batches is None else min(max_batches, len(loader)))
    started = time.perf_counter()
    for batch in bar:
        batch: Batch = batch.to(config.device)
        optimizer.zero_grad(set_to_none=True)
        loss = step(batch)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
        bar.set_postfix(loss=f"{total / count:.4f}")
        if step_seconds is not None:
            now = time.perf_counter()
            step_seconds.append(now - started)
            started = now
    if distributed.is_distributed():
        sums = torch.tensor([total, count], dtype=torch.float64)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


@contextmanager
def deterministic_algorithms(enabled: bool):
    """Switch ``torch.use_deterministic_algorithms`` for a block, then restore it."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def fit(
    model: SequentialRecommender,
    prepared: PreparedDataset,
    config: TrainConfig,
    log: Callable[[str], None] | None = print,
) -> FitResult:
    """Train ``model`` on the train split, select on valid, keep the best weights.

    With ``config.out_dir``: writes ``last.pt`` (every epoch), ``best.pt`` (on each
    validation gain), ``log.jsonl`` (one JSON object per epoch) and ``config.json``, all
    atomically. With ``config.resume`` it continues from ``last.pt``. On return the model
    holds the best weights. Models without a loss (e.g. popularity) are only evaluated.

    In a :mod:`torch.distributed` process group every rank calls ``fit`` with the same
    arguments; the model is wrapped in DistributedDataParallel, ``config.batch_size`` is
    the global batch, and only rank 0 writes files and logs.
    """
    with deterministic_algorithms(config.deterministic):
        return _fit(model, prepared, config, log)


def _fit(
    model: SequentialRecommender,
    prepared: PreparedDataset,
    config: TrainConfig,
    log: Callable[[str], None] | None,
) -> FitResult:
    model.to(config.device)
    metric = selection_metric(model, prepared)
    out = Path(config.out_dir) if config.out_dir else None
    main = distributed.is_main_process()
    log = log if main else None
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = bool(params)
    optimizer = (
        torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if trainable else None
    )
    state = {"epoch": -1, "best_score": -float("inf"), "best_epoch": -1, "bad_epochs": 0,
             "history": [], "train_seconds": 0.0, "best_valid": {}}
    best_weights, best_weights_epoch = None, -1
    fingerprint = run_fingerprint(model, prepared, config) if out is not None else None
    if out is not None:
        ckpt = check_run_dir(model, prepared, config, fingerprint)  # before any write
        if main:
            for tmp in remove_stale_temporaries(out, ATOMIC_FILES):
                if log:
                    log(f"removed {tmp}, left by an interrupted write")
            atomic_write_text(out / "config.json", json.dumps(asdict(config), indent=2))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            if optimizer is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            if log:
                log(f"resumed from {out / 'last.pt'} after epoch {state['epoch']}")

    if not trainable:
        valid = evaluate(model, prepared, "valid", config.eval_batch_size, config.device,
                         mask_seen=config.mask_seen)
        return FitResult(0, 0, 0.0, valid, [{"epoch": 0, "valid": valid}])

    step = None
    if distributed.is_distributed():
        device_ids = [torch.device(config.device)] if config.device.startswith("cuda") else None
        step = DistributedDataParallel(distributed.LossModule(model), device_ids=device_ids,
                                       find_unused_parameters=config.find_unused_parameters)
    dataset = SequenceDataset(prepared, "train", loo_train_targets=config.loo_train_targets,
                              loo_train_positives=config.loo_train_positives)
    for epoch in range(state["epoch"] + 1, config.epochs):
        if state["bad_epochs"] >= config.patience:
            break
        start = time.perf_counter()
        loss = _train_epoch(model, optimizer, dataset, config, epoch, step)
        train_time = time.perf_counter() - start
        valid = evaluate(model, prepared, "valid", config.eval_batch_size, config.device,
                         mask_seen=config.mask_seen)
        seconds = time.perf_counter() - start
        state["train_seconds"] += train_time
        score = valid.get(metric, float("nan"))
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_valid=valid)
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_weights_epoch = epoch
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        row = {"epoch": epoch, "loss": loss, "valid": valid, "epoch_seconds": seconds,
               "train_seconds": train_time, "best": improved}
        state["history"].append(row)
        if log:
            metrics = " ".join(f"{k}={v:.4f}" for k, v in valid.items())
            log(f"epoch {epoch:3d} loss={loss:.4f} {metrics} ({seconds:.1f}s)"
                + (" *" if improved else ""))
        if out is not None and main:
            if improved:
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch,
                                   "model_repr": repr(model), "fingerprint": fingerprint},
                                  out / "best.pt")
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "state": state, "model_repr": repr(model), "fingerprint": fingerprint},
                out / "last.pt",
            )
            atomic_write_text(
                out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"])
            )

    best: tuple[str, Any] | None = None
    if out is not None and main and state["best_epoch"] >= 0:
        best = ("error", f"{out / 'best.pt'} is missing: it should hold epoch "
                         f"{state['best_epoch']}, the best on validation")
        if (out / "best.pt").is_file():
            try:
                saved = load_checkpoint(out / "best.pt")
            except RunDirError as exc:
                saved = {"error": str(exc)}
            if saved.get("epoch") == state["best_epoch"] and "model" in saved:
                best = ("ok", saved["model"])
            elif "error" in saved:
                best = ("error", saved["error"])
            else:
                best = ("error", f"{out / 'best.pt'} holds epoch {saved.get('epoch')}, "
                                 f"not epoch {state['best_epoch']}, the best on validation")
        if best[0] == "error" and best_weights_epoch == state["best_epoch"]:
            # this process trained the best epoch: its weights are in memory
            atomic_torch_save({"model": best_weights, "epoch": best_weights_epoch,
                               "model_repr": repr(model), "fingerprint": fingerprint},
                              out / "best.pt")
            best = ("ok", best_weights)
    best = distributed.broadcast_object(best)  # every rank ends with rank 0's best weights
    if best is not None:
        if best[0] == "error":
            raise RunDirError(best[1])
        model.load_state_dict(best[1])
    elif best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult(
        best_epoch=state["best_epoch"],
        epochs=state["epoch"] + 1,
        train_seconds=state["train_seconds"],
        best_valid=state["best_valid"],
        history=state["history"],
    )
