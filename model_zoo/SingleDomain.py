"""Single Domain: K independent single-domain models (the tables' reference row, Crocodile paper section 4.3),
trained side by side in one run: model ``s`` is trained on domain ``s``'s rows only, selected and early-stopped
on domain ``s``'s validation rows only, and regularised as it would be if trained alone.

Notation: ``B`` rows in a batch, ``n_s`` of them of domain ``s``; ``N_s`` training rows of domain ``s``; ``F``
fields; ``D`` the width of one embedding table; ``K`` domains; ``H`` the last hidden width of a DNN.

    fields of domain s's rows --table s (own parameters)--> e^s (n_s x F*D) --DNN_s--> logits (n_s)
    loss: eq. (8), sum_s mean BCE of domain s's rows  +  sum_s (n_s / B) * regulariser(table s, DNN_s)

Model ``s`` = table ``s`` + DNN ``s``; nothing else exists, and no parameter, gradient, learning rate, norm
statistic or stopping decision of model ``s`` depends on another domain's rows. Each choice and its reason:

* **Separate parameters.** Table ``s`` is its own embedding module (:class:`~model_zoo.layers.SeparateTables`,
  FuxiCTR's encoders inside), looked up for domain ``s``'s rows only; DNN ``s`` runs on those rows only
  (:class:`~model_zoo.layers.DomainGroups`). The optimiser (the config's class and learning rate, built by
  FuxiCTR's ``compile``) is re-created with one parameter group per domain (table ``s`` + DNN ``s``, the group's
  ``"domain"`` key = ``s``), so that each domain has its own learning rate: decayed at its own plateaus, set to
  0 once it has stopped (Adam with learning rate 0 leaves the parameters unchanged). Gradients are clipped per
  domain (:meth:`gradient_clip_groups`), on the norm a model trained alone would clip.
* **Loss.** Always eq. (8)'s per-domain mean BCE (``loss_weighting: domain``): table ``s`` and DNN ``s`` get
  exactly the gradient of the mean loss of domain ``s``'s rows in the batch, what a model of domain ``s`` trained
  on those rows would get. ``loss_weighting: batch`` (the batch mean, which scales domain ``s``'s gradient by its
  share ``n_s / B``) is refused at construction.
* **Regularisation as a standalone model** (:meth:`regularization_loss`). A model of domain ``s`` trained alone
  takes ``N_s / B`` steps per epoch and adds its regulariser once per step: ``N_s / B`` times per epoch. Here
  every step of the run (``N / B`` per epoch) reaches model ``s``, so the step adds domain ``s``'s regulariser
  weighted by ``n_s / B``; since the ``n_s`` of an epoch add up to ``N_s``, model ``s`` gets the same total
  penalty per epoch as alone (``lambda * N_s / B``), whatever its share of the data. This holds for the embedding
  regulariser at either scope (``table``: whole table ``s``; ``batch``: the rows of table ``s`` that domain
  ``s``'s rows look up) and for the net regulariser on DNN ``s``. (Unweighted, a domain with 10% of the rows would
  get ten times the penalty per own row that it gets alone.)
* **Per-domain early stopping and selection** (:meth:`eval_step`, :meth:`validate_domains`). Each validation
  predicts the validation rows once; domain ``s``'s monitor is the configured monitor formula on domain ``s``'s
  rows (``{AUC: 1, gAUC: 1}`` -> AUC + gAUC of its rows; a monitor metric naming a domain, ``AUC@S1``, is read as
  its base metric on domain ``s``'s rows). Each domain keeps its own :class:`~model_zoo.core.training.TrainingState`
  (FuxiCTR's rule: improvement, plateau count, ``early_stop_patience``, ``reduce_lr_on_plateau`` on its own
  group only). When domain ``s`` improves, a CPU copy of its parameters and buffers and its validation
  predictions are kept. When it stops, its best copy is loaded and it is frozen (learning rate 0, its modules in
  eval mode so that its norm statistics stay). The run stops when every domain has stopped (or at the epoch
  cap, or when a validation callback says so: a pruned trial). ``fit`` ends by loading every domain's best copy
  and writing that composite model as the checkpoint, which it then loads (the runner's contract).
* **What the run reports.** Each ``valid_history`` entry describes the composite model ``fit`` would return if it
  stopped there: its metrics (the monitor's) are computed on the concatenation of every domain's best-so-far
  validation predictions, ``monitor`` is their monitor value; it also lists ``domain_monitor`` (each domain's
  monitor at this validation), ``domain_best_epoch`` and ``domain_stopped``. The run's :attr:`state`:
  ``best_metric`` = the composite monitor, ``best_epoch`` = the latest of the domains' best epochs;
  :attr:`domain_states` holds each domain's own.
* **Known difference from K separate runs.** Batches are the run's mixed batches: model ``s`` steps ``N / B``
  times per epoch on ``n_s`` (about ``B * N_s / N``) rows each, where a separate run with batch size ``B`` would
  step ``N_s / B`` times on ``B`` rows; its gradient is the same mean-loss estimate with more noise per step.
* **Data-parallel training.** Every rank validates on the gathered predictions of all ranks, so every domain
  decision is the same on every rank; snapshots are taken from identical weights; rank 0 writes the checkpoint.
* DNN widths ``dnn_hidden_units: [128, 64, 32]`` = the size rule's bottom [128, 64] plus its tower [32], as
  for the other single-network rows. ``batch_norm: true`` normalises every hidden layer of DNN_s with the
  statistics of domain s's rows in the batch; a domain with one row (or none) in a batch is normalised with its
  running statistics instead (:class:`~model_zoo.layers.norms.RowSafeBatchNorm1d`).
* ``expert_outputs_for_analysis``: eq. (1) needs "the output norm of domain-specific experts" of the Single
  Domain models. Chosen: the expert output of domain s's network on a row is DNN_s's last hidden layer (the
  input of its logit layer) computed on the row's embeddings from table s - the representation the network's
  prediction is a linear function of. Every domain's network runs on every row (also rows of other domains),
  since D(i,j) compares two networks on the same sample; network s is bound to domain s. Shape ``K x B x H``.
* ``embedding_table_domains``: table s of ``self.embedding`` (``K`` tables) belongs to domain s.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mdl_bench.kernel.errors import UserError
from .base import MultiDomainModel, regularizer
from .core import metrics as metric_lib, training
from .layers import BatchedMLP, DomainGroups, SeparateTables, single


@dataclass
class DomainBest:
    """What is kept of one domain's best validation: ``state``, CPU copies of its parameters and buffers (table
    ``s`` and DNN ``s``, by ``state_dict`` key); ``arrays``, the validation predictions of its rows then
    (``y_pred``, ``y_true``, ``domain``, ``group`` as :meth:`MultiDomainModel.predict_arrays` gives them, ``n_s``
    each)."""

    state: dict[str, torch.Tensor]
    arrays: dict[str, np.ndarray]


class SingleDomain(MultiDomainModel):
    """K independent single-domain models (table ``s`` + DNN ``s``), each trained on its own domain's rows, with its
    own learning rate, regulariser weight, early stopping and best checkpoint (see the module docstring).

    Tuned by the ``tune`` suite: the training recipe every method shares only (not ``loss_weighting``: it is
    always ``domain``); it has no own hyperparameter that is not a width (widths follow the benchmark's size rule
    and are not tuned).

    Args:
        dnn_hidden_units: hidden widths of every domain's DNN, followed by a linear logit.
        net_dropout: dropout after every hidden activation.
        batch_norm: batch normalisation in every hidden layer (statistics of the domain's own rows).

    Shapes: ``logits(X, domain)``: ``B`` rows -> ``B`` logits, row ``b`` from model ``domain[b]``.
    """

    group = "Single Domain"
    display_name = "Single Domain"

    def __init__(self, feature_map, model_id: str = "SingleDomain", gpu: int = -1, learning_rate: float = 1e-3,
                 embedding_dim: int = 16, dnn_hidden_units: Sequence[int] = (256, 128, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False, **kwargs):
        if kwargs.get("loss_weighting") == "batch":
            raise UserError("SingleDomain trains each domain's model on its own mean loss (eq. 8's per-domain mean "
                            "BCE), so loss_weighting: batch does not apply; remove the key or set "
                            "loss_weighting: domain")
        super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                         embedding_dim=embedding_dim, **kwargs)
        K = self.num_domains
        self.embedding = SeparateTables(feature_map, embedding_dim, K)  # table s: domain s's, own parameters
        self.dnns = nn.ModuleList([
            DomainDNN(self.embedding.output_dim, dnn_hidden_units, hidden_activations, net_dropout, batch_norm)
            for _ in range(K)])
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()
        # the config's optimiser class and rate, re-created with one group per domain (its own learning rate)
        self.optimizer = type(self.optimizer)([{"params": self.domain_parameters(s), "domain": s} for s in range(K)],
                                              lr=learning_rate)
        self._domain_keys = self._state_keys_by_domain()
        self._last_batch: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None  # regulariser's weights
        self.domain_states: list[training.TrainingState] = []  # per domain, during and after fit
        self.domain_best: list[DomainBest | None] = []

    # ------------------------------------------------------------------ the K models
    def domain_modules(self, s: int) -> list[nn.Module]:
        """Model ``s``: table ``s`` and DNN ``s``."""
        return [self.embedding.tables[s], self.dnns[s]]

    def domain_parameters(self, s: int) -> list[nn.Parameter]:
        return [p for module in self.domain_modules(s) for p in module.parameters()]

    def gradient_clip_groups(self) -> list[list[nn.Parameter]]:
        """Each domain's gradients are clipped on their own norm (:func:`~model_zoo.core.step.clip_groups`)."""
        return [self.domain_parameters(s) for s in range(self.num_domains)]

    def _state_keys_by_domain(self) -> list[list[str]]:
        """The ``state_dict`` keys of each model; every key belongs to exactly one (checked: a snapshot of every
        domain is then a whole checkpoint)."""
        prefixes = [(f"embedding.tables.{s}.", f"dnns.{s}.") for s in range(self.num_domains)]
        keys = list(self.state_dict())
        out = [[k for k in keys if k.startswith(p)] for p in prefixes]
        if sorted(k for part in out for k in part) != sorted(keys):
            raise RuntimeError(f"SingleDomain: state keys outside the domains' models: "
                               f"{sorted(set(keys) - {k for part in out for k in part})}")
        return out

    @property
    def embedding_table_domains(self) -> list:
        """Table ``s`` of the main embedding belongs to domain ``s``."""
        return list(range(self.num_domains))

    def expert_outputs_for_analysis(self, X):
        """``K x B x H``: every domain's DNN on every row (its own table), its last hidden layer; bound ``0..K-1``."""
        emb = self.embedding.flat(X)  # K x B x F*D, table s in slot s
        return (torch.stack([dnn.hidden_output(emb[s]) for s, dnn in enumerate(self.dnns)]),
                list(range(self.num_domains)))

    def logits(self, X, domain):
        self._last_batch = (X, domain)  # the batch the loss's regulariser is weighted by
        groups = DomainGroups(domain, self.num_domains)
        own = self.embedding.routed(X, groups)  # K tensors n_s x F*D: table s on domain s's rows
        return groups.merge([dnn(rows) for dnn, rows in zip(self.dnns, own)]), {}

    def regularization_loss(self):
        """``sum_s (n_s / B) * R_s``: ``R_s`` is FuxiCTR's regulariser on model ``s`` alone (the embedding
        regulariser on table ``s`` - whole, or at ``embedding_regularizer_scope: batch`` the rows that domain
        ``s``'s rows of the batch look up - and the net regulariser on DNN ``s``), ``n_s`` the rows of domain ``s``
        in the batch of the last forward pass, ``B`` all its rows. Why ``n_s / B``: see the module docstring."""
        settings = self.settings
        if not (settings.embedding_regularizer or settings.net_regularizer):
            return 0
        if self._last_batch is None:
            raise RuntimeError("SingleDomain.regularization_loss weights each domain by its rows in the batch: "
                               "run the forward pass first")
        X, domain = self._last_batch
        batch_scope = self.embedding_regularizer_scope == "batch" and bool(settings.embedding_regularizer)
        rows = int(domain.shape[0])
        reg = 0
        for s, n in enumerate(torch.bincount(domain, minlength=self.num_domains).tolist()):
            if n == 0:  # weight 0: no term (its parameters still get the BCE's zero gradient)
                continue
            own = {name: value[domain == s] for name, value in X.items()} if batch_scope else None
            reg = reg + (n / rows) * regularizer(self.domain_modules(s), settings.embedding_regularizer,
                                                 settings.net_regularizer, own)
        return reg

    # ------------------------------------------------------------------ training: per-domain stopping
    def train(self, mode: bool = True):
        """As ``nn.Module.train``, except that a stopped (frozen) domain's modules stay in eval mode: its batch
        norm statistics must not move while the other domains train."""
        super().train(mode)
        if mode:
            for s, state in enumerate(self.domain_states):
                if state.stop:
                    for module in self.domain_modules(s):
                        module.eval()
        return self

    def fit(self, data_generator, epochs: int = 1, validation_data=None, max_gradient_norm: float | None = None,
            **kwargs) -> None:
        """:meth:`MultiDomainModel.fit` with per-domain early stopping. Every domain starts afresh: its own
        :class:`~model_zoo.core.training.TrainingState` and the configured learning rate (a domain frozen by an
        earlier ``fit`` trains again)."""
        self.domain_states = [training.TrainingState.start(len(data_generator), self.settings.eval_steps,
                                                           self.settings.monitor_mode)
                              for _ in range(self.num_domains)]
        self.domain_best = [None] * self.num_domains
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate
        super().fit(data_generator, epochs=epochs, validation_data=validation_data,
                    max_gradient_norm=max_gradient_norm, **kwargs)

    def eval_step(self) -> None:
        """Validate: predict the validation rows once, then decide every domain (:meth:`validate_domains`)."""
        logging.info(f"Evaluation @epoch {self.state.epoch + 1} - batch {self.state.batch + 1}: ")
        self.validate_domains(self.predict_arrays(self.validation_data))
        self.train()

    def checkpoint_and_earlystop(self, logs, min_delta: float = training.MIN_DELTA) -> None:
        raise TypeError("SingleDomain decides each domain on its own validation rows: use validate_domains(arrays)")

    def domain_monitor_values(self, arrays: dict[str, np.ndarray]) -> list[float]:
        """Each domain's monitor value: the monitor formula with every metric computed on that domain's rows of
        ``arrays`` (:meth:`predict_arrays`' output, ``N`` rows); ``K`` floats (NaN where a metric cannot be
        computed, e.g. a domain without both classes)."""
        monitor = self.settings.monitor
        names = monitor.get_metrics()
        bases = [metric_lib.parse_metric(name)[0] for name in names]
        values = []
        for s in range(self.num_domains):
            part = _domain_rows(arrays, s)
            logs = metric_lib.compute_metrics(sorted(set(bases)), part["y_true"], part["y_pred"],
                                              group=part.get("group"))
            values.append(float(monitor.get_value({name: logs[base] for name, base in zip(names, bases)})))
        return values

    def validate_domains(self, arrays: dict[str, np.ndarray], values: Sequence[float] | None = None,
                         min_delta: float = training.MIN_DELTA) -> dict:
        """One validation: every domain not yet stopped is decided on its monitor value (``values``, default
        :meth:`domain_monitor_values` of ``arrays``); then the composite model's entry goes to
        :attr:`valid_history` and to every validation callback (which may stop training). Returns the entry."""
        values = self.domain_monitor_values(arrays) if values is None else [float(v) for v in values]
        for s, value in enumerate(values):
            if not self.domain_states[s].stop:
                self._decide_domain(s, value, arrays, min_delta)
        entry = self._composite_entry(values)
        self.valid_history.append(entry)
        for callback in self.validation_callbacks:
            reason = callback(entry)
            if reason and not self.state.stop:
                self.state.stop, self.state.stopped_by = True, str(reason)
                logging.info(f"Training stopped: {reason}")
        return entry

    def _decide_domain(self, s: int, value: float, arrays: dict[str, np.ndarray], min_delta: float) -> None:
        """FuxiCTR's rule on domain ``s`` alone: keep its weights and predictions when it improves; at a plateau
        decay its group's learning rate; once ``early_stop_patience`` plateaus came in a row, freeze it at its
        best (learning rate 0, best weights loaded)."""
        settings, state, name = self.settings, self.domain_states[s], self.domain_names[s]
        state.epoch, state.batch = self.state.epoch, self.state.batch
        if math.isnan(value):
            improved = training.record_unmeasured(state, settings.early_stop_patience)
        else:
            improved = training.record_validation(state, value, settings.monitor_mode, settings.early_stop_patience,
                                                  min_delta)
        group = self.optimizer.param_groups[s]
        if improved or not settings.save_best_only:  # save_best_only: false keeps the latest, as FuxiCTR's
            keys = set(self._domain_keys[s])
            self.domain_best[s] = DomainBest({k: v.detach().to("cpu", copy=True)
                                              for k, v in self.state_dict().items() if k in keys},
                                             {k: v.copy() for k, v in _domain_rows(arrays, s).items()})
        if improved:
            logging.info(f"{name}: monitor({settings.monitor_mode})={value:.6f}, best so far: weights kept")
        else:
            logging.info(f"{name}: monitor({settings.monitor_mode})={value:.6f}, no improvement")
            if settings.reduce_lr_on_plateau:
                rate = training.decay_group_learning_rate(group)  # this domain's group only
                logging.info(f"{name}: reduce learning rate on plateau: {rate:.6f}")
        if state.stop:
            group["lr"] = 0.0
            self._load_domain(s, self.domain_best[s].state)
            logging.info(f"{name}: early stop, frozen at its best (epoch {state.best_epoch})")

    def _load_domain(self, s: int, state: dict[str, torch.Tensor]) -> None:
        """Copy a kept state of domain ``s`` into its live parameters and buffers (in place: the optimiser keeps
        them)."""
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys or set(self._domain_keys[s]) & set(result.missing_keys):
            raise RuntimeError(f"SingleDomain: the kept state of domain {s} does not match its model")

    def composite_arrays(self) -> dict[str, np.ndarray]:
        """The validation predictions of the composite model: every domain's rows as predicted at its kept
        validation, concatenated domain by domain (``N`` rows)."""
        kept = [best.arrays for best in self.domain_best if best is not None]
        return {key: np.concatenate([a[key] for a in kept]) for key in kept[0]}

    def _composite_entry(self, values: list[float]) -> dict:
        """The ``valid_history`` entry of the composite model (see the module docstring); updates :attr:`state`."""
        settings, state = self.settings, self.state
        logs = self.evaluate_arrays(self.composite_arrays(), metrics=settings.monitor.get_metrics())
        monitor = float(settings.monitor.get_value(logs))
        best_epochs = [d.best_epoch for d in self.domain_states]
        state.best_metric = monitor
        state.best_epoch = max((e for e in best_epochs if e is not None), default=None)
        state.stopping_steps = min((d.stopping_steps for d in self.domain_states if not d.stop), default=0)
        logging.info(f"[Composite] monitor({settings.monitor_mode})={monitor:.6f} - "
                     + " - ".join(f"{k}: {v:.6f}" for k, v in logs.items())
                     + f" - best epoch per domain: {best_epochs}")
        if all(d.stop for d in self.domain_states):
            state.stop = True
            logging.info(f"********* Epoch={state.epoch + 1} early stop: every domain has stopped *********")
        return {"epoch": state.epoch + 1, "batch": state.batch + 1, "epoch_end": state.at_epoch_end,
                "monitor": monitor, **{k: float(v) for k, v in logs.items()},
                "domain_monitor": list(values), "domain_best_epoch": best_epochs,
                "domain_stopped": [d.stop for d in self.domain_states]}

    @property
    def domain_best_epochs(self) -> list[int | None]:
        """Epoch (from 1) of each domain's kept weights after the last ``fit``."""
        return [d.best_epoch for d in self.domain_states]

    def restore_best(self) -> None:
        """Load every domain's kept weights, write that composite model as the checkpoint, then load it (the
        runner's contract: after ``fit`` the model is the checkpoint ``fit`` wrote)."""
        if self.domain_best and all(best is not None for best in self.domain_best):
            for s, best in enumerate(self.domain_best):
                self._load_domain(s, best.state)
            logging.info(f"Save the composite best model (best epoch per domain: {self.domain_best_epochs})")
            self.save_weights(self.checkpoint)
        super().restore_best()


def _domain_rows(arrays: dict[str, np.ndarray], s: int) -> dict[str, np.ndarray]:
    """The rows of domain ``s`` of every array of ``arrays`` (``N`` rows each, with a ``domain`` array)."""
    rows = arrays["domain"] == s
    return {key: value[rows] for key, value in arrays.items()}


class DomainDNN(nn.Module):
    """One domain's DNN: hidden layers (``Linear -> [BatchNorm] -> activation -> [Dropout]``), then a linear logit.

    Shapes:
        ``forward(x)``: ``N x I`` -> logits ``N``; ``hidden_output(x)``: ``N x I`` -> ``N x H``.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], activation: str, dropout: float,
                 batch_norm: bool):
        super().__init__()
        self.hidden = BatchedMLP(1, input_dim, hidden_units, activation=activation, dropout=dropout,
                                 batch_norm=batch_norm)
        self.output = nn.Linear(self.hidden.output_dim, 1)

    def hidden_output(self, x: torch.Tensor) -> torch.Tensor:
        return single(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden_output(x)).view(-1)
