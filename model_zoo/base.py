"""The multi-domain model contract, on top of FuxiCTR's ``BaseModel``.

A model subclasses :class:`MultiDomainModel`, builds its layers in ``__init__`` (ending, as in FuxiCTR, with
``compile``, ``reset_parameters`` and ``model_to_device``) and implements :meth:`MultiDomainModel.logits`,
which gets the model inputs and each row's domain index and returns one logit per row plus named auxiliary
losses. The base class does the rest:

* reads the domain of every row from the domain field (FuxiCTR remaps its values to ids ``1..K`` plus PAD and
  OOV; a lookup table turns ids into tower indices ``0..K-1`` in the order of the config's ``domains``);
* the loss of eq. (8): the mean BCE of each domain's rows, summed over the domains present in the batch,
  plus every auxiliary loss, each logged on its own;
* evaluation: logloss, AUC and gAUC overall and per domain (``AUC@S6``), each usable as ``monitor``;
* the training loop (:meth:`MultiDomainModel.fit`): this package's own, with its state in :attr:`state`
  (:class:`~mdl_bench.model_zoo.core.training.TrainingState`) and FuxiCTR's early-stopping rule
  (:mod:`mdl_bench.model_zoo.core.training`); the train step is
  :func:`mdl_bench.model_zoo.core.step.train_step`, the one step that ``mdl-bench perf`` times too; each loss term
  is logged, throughput and per-epoch time counted. Of FuxiCTR's ``BaseModel`` the constructor, optimiser and
  loss set-up, initialisation, inputs, regularisers and checkpoint loading are used, through
  :mod:`mdl_bench.model_zoo.core.fuxictr_api`.

Hooks a model may declare for the analysis and perf tools (each has a default here; the tools ask through
them, never by class name or by guessing attributes, and ``mdl-bench check-model`` checks the ones a model
declares):

* :meth:`MultiDomainModel.expert_outputs_for_analysis`: its experts' outputs ``E x B x H`` and the domain each
  is bound to (Diversity Index, covariance heatmaps, figures 1a and 7). Default: ``None``, no experts.
* :attr:`MultiDomainModel.embedding_table_domains`: per table of the main multi-embedding (``self.embedding``)
  the domain it belongs to, or ``None`` for a shared table (IA per table, figure 5). Default: ``None``, every
  table shared.
* :meth:`MultiDomainModel.step_components`: the parts of one training step, for ``mdl-bench perf``'s split of
  a step. Default: ``None``, the step is timed as a whole.
* :attr:`MultiDomainModel.unused_options` and :meth:`MultiDomainModel.field_selections`: the options naming
  fields, for the contract's field check.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections import OrderedDict, defaultdict
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mdl_bench.kernel.errors import UserError
from mdl_bench.kernel.paths import bench_home
from mdl_bench.model_zoo.core import allocator, collectives, metrics as metric_lib, step as step_lib
from mdl_bench.model_zoo.core import training
from mdl_bench.model_zoo.core.fuxictr_api import BaseModel, trainer_settings

BCE_NAMES = ("binary_crossentropy", "binary_cross_entropy", "bce")


class MultiDomainModel(BaseModel):
    """Base class of every model in the zoo.

    Args:
        feature_map: FuxiCTR feature map of a built dataset.
        domain_field: the categorical field holding each row's domain.
        domains: raw values of the domain field, one tower per value, in this order.
        domain_names: display names (default ``S<value>``).
        num_domains: optional; when a model config pins the number of domains, a dataset with another number is
            an error at construction.
        embedding_dim: ``D``, the width of one embedding table.
        learning_rate, optimizer, loss: as in FuxiCTR (``loss`` must be binary cross-entropy; it is computed
            from logits, per domain, as eq. (8)).
        evaluations_per_epoch: validate (and decide early stopping, checkpoint, learning-rate decay) this many
            times per epoch, evenly spaced, the last at the epoch's end; default ``None``: FuxiCTR's ``eval_steps``
            (by default once per epoch). Early-stopping patience then counts these validations.
        max_gradient_norm: every step clips the total gradient norm to this (FuxiCTR's ``fit`` default, 10). It is
            the model's, so that a step works outside ``fit`` too; ``fit(max_gradient_norm=...)`` replaces it, as
            in FuxiCTR.

    Hooks: see the module docstring (each has a default here; each method's docstring gives its shapes).

    Training state (during and after ``fit``): :attr:`state` (epoch, batch, steps, best monitor value, the stop
    flag and its reason, the best epoch); ``None`` before the first ``fit``.

    Data-parallel training: :meth:`attach_data_parallel` gives the model its DDP wrapper (:attr:`data_parallel`),
    through which every train step then runs.

    Validation (during ``fit``):
        valid_history: one ``{"epoch", "batch", "epoch_end", "monitor", <metric>: value}`` per validation.
        validation_callbacks: callables given each new ``valid_history`` entry; one that returns a text stops
            training there (``stopped_by`` keeps the text), the best checkpoint so far is the model's.

    Training figures (counted in ``fit``, evaluation excluded):
        train_rows, train_seconds: totals since construction.
        epoch_log: one ``{"epoch", "seconds", "rows"}`` per trained epoch since construction (``epoch`` counts
            from 1 within its ``fit``); seconds are read with a clock that waits for CUDA on a GPU.

    Class attributes:
        group: the leaderboard group of the paper's tables ("Single Domain", "MTL (SE)", "MTL (ME)", "MDL",
            "Crocodile").
        display_name: the name in tables (defaults to the class name).
    """

    group: str = "MDL"
    display_name: str | None = None

    def __init__(self, feature_map, model_id: str = "MultiDomainModel", gpu: int = -1,
                 learning_rate: float = 1e-3, embedding_dim: int = 16, domain_field: str | None = None,
                 domains: list | None = None, domain_names: list | None = None, num_domains: int | None = None,
                 loss: str = "binary_crossentropy", optimizer: str = "adam", max_gradient_norm: float = 10.0,
                 loss_weighting: Literal["domain", "batch"] = "domain",
                 embedding_regularizer_scope: Literal["table", "batch"] = "table",
                 evaluations_per_epoch: int | None = None, **kwargs):
        kwargs.setdefault("verbose", 1)
        kwargs.setdefault("metrics", ["logloss", "AUC", "gAUC"])
        kwargs.setdefault("model_root", str(bench_home() / "checkpoints"))
        super().__init__(feature_map, model_id=model_id, gpu=gpu, **kwargs)
        self.settings = trainer_settings(self)  # FuxiCTR's trainer options, read once, in our names
        self.state: training.TrainingState | None = None
        if str(loss) not in BCE_NAMES:
            raise UserError(f"{type(self).__name__}: loss {loss!r} is not supported; multi-domain CTR models here "
                            f"train with binary_crossentropy (eq. 8)")
        self.learning_rate, self.optimizer_name, self.loss_name = learning_rate, optimizer, loss
        self.embedding_dim = embedding_dim
        self.domain_field, self.domains = self._check_domains(feature_map, domain_field, domains)
        self.num_domains = len(self.domains)
        if num_domains is not None and int(num_domains) != self.num_domains:
            raise UserError(f"{type(self).__name__}: the model config expects num_domains={num_domains} but dataset "
                            f"{feature_map.dataset_id!r} has {self.num_domains} domains ({', '.join(map(str, self.domains))}); "
                            f"fix `num_domains` in the model config or use a dataset with that many domains")
        self.domain_names = ([str(n) for n in domain_names] if domain_names else [f"S{v}" for v in self.domains])
        self.register_buffer("domain_lookup", self._domain_lookup(feature_map), persistent=False)
        has_group = feature_map.group_id is not None  # checked here, before training, not at the first evaluation
        metric_lib.check_metric_names(self.validation_metrics, self.domain_names, where="metrics", has_group=has_group)
        metric_lib.check_metric_names(self.settings.monitor.get_metrics(), self.domain_names, where="monitor",
                                      has_group=has_group)
        self._max_gradient_norm = float(max_gradient_norm)
        self.loss_weighting, self.embedding_regularizer_scope = loss_weighting, embedding_regularizer_scope
        if evaluations_per_epoch is not None and kwargs.get("eval_steps") is not None:
            raise UserError(f"{type(self).__name__}: eval_steps and evaluations_per_epoch both set when to validate; "
                            f"keep one of them (set the other to null, e.g. --set evaluations_per_epoch=null)")
        self.evaluations_per_epoch = evaluations_per_epoch
        self._batch_inputs: dict[str, torch.Tensor] | None = None  # set by forward under the batch scope
        self.train_rows = 0
        self.train_seconds = 0.0
        self.epoch_log: list[dict[str, float]] = []
        self.step_callbacks: list[Callable[[dict], None]] = []
        # every validation during fit ({"epoch", "batch", "epoch_end", "monitor", metric: value}); a validation
        # callback gets each entry and returns a reason to stop training (e.g. a tuner pruning a trial) or None
        self.valid_history: list[dict[str, float]] = []
        self.validation_callbacks: list[Callable[[dict], str | None]] = []

    # ------------------------------------------------------------------ domains
    def _check_domains(self, feature_map, domain_field, domains):
        name = type(self).__name__
        if not domain_field:
            raise UserError(f"{name}: the dataset config has no `domain_field`; add `domain_field: <column>` and "
                            f"`domains: [...]` to dataset {feature_map.dataset_id!r}")
        spec = feature_map.features.get(domain_field)
        if spec is None or spec.get("type") != "categorical":
            raise UserError(f"{name}: domain_field {domain_field!r} is not a categorical feature of dataset "
                            f"{feature_map.dataset_id!r}; add it to feature_cols as type: categorical")
        if not domains:
            raise UserError(f"{name}: dataset {feature_map.dataset_id!r} lists no `domains`; add the values of "
                            f"{domain_field!r}, one per tower")
        return domain_field, list(domains)

    def _domain_lookup(self, feature_map) -> torch.Tensor:
        vocab_path = os.path.join(feature_map.data_dir, "feature_vocab.json")
        try:
            with open(vocab_path, "r", encoding="utf-8") as fh:
                vocab = json.load(fh)[self.domain_field]
        except (OSError, ValueError, KeyError):
            raise UserError(f"{type(self).__name__}: cannot read the vocabulary of {self.domain_field!r} from "
                            f"{vocab_path}; rebuild the dataset") from None
        lookup = torch.full((max(vocab.values()) + 1,), -1, dtype=torch.long)
        for index, value in enumerate(self.domains):
            if str(value) not in vocab:
                raise UserError(f"{type(self).__name__}: domain {value!r} of the config is not in the built data of "
                                f"{feature_map.dataset_id!r} (values there: "
                                f"{', '.join(k for k in vocab if not k.startswith('__'))}); fix `domains`")
            lookup[vocab[str(value)]] = index
        unlisted = [k for k, v in vocab.items() if not k.startswith("__") and lookup[v] < 0]
        if unlisted:
            raise UserError(f"{type(self).__name__}: the data has domain {self.domain_field}={unlisted[0]}, which "
                            f"`domains` does not list; add it to `domains` or rebuild without those rows")
        return lookup

    def domain_of(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tower index ``0..K-1`` of every row, shape ``B``."""
        return self.domain_lookup[X[self.domain_field].long()]

    def expert_outputs_for_analysis(self, X: dict[str, torch.Tensor]):
        """``(O, bound)`` for the analysis tools (Diversity Index, covariance heatmaps), or ``None``.

        ``O`` is ``E x B x H``, the outputs of the model's experts; ``bound[e]`` is the tower index of the domain
        expert ``e`` belongs to, or ``None`` for a shared expert (eq. 2 vs eq. 3 of the paper). Models without
        experts keep the default ``None``.
        """
        return None

    @property
    def embedding_table_domains(self) -> list | None:
        """Per table of the main multi-embedding ``self.embedding``: the tower index of the domain the table
        belongs to, or ``None`` for a shared table; ``None`` (the default) = every table shared."""
        return None

    def step_components(self, X: dict[str, torch.Tensor],
                        domain: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]] | None:
        """The parts of one training step, for ``mdl-bench perf``'s scaling curves, or ``None``.

        ``X`` holds the model inputs of a batch of ``B`` rows (:meth:`get_inputs`), ``domain`` their tower indices
        (``B``). A model that splits its step returns ``{part: closure}`` in step order; each closure runs one part
        on the model's own layers and returns a scalar (e.g. the sum of the part's output) whose ``backward()``
        is that part's backward. Inputs that come from earlier parts are computed once beforehand and detached
        (leaves), so that each closure's forward+backward is its part alone. The default ``None`` means "this
        model does not split its step": perf then reports the step as a whole.
        """
        return None

    #: options of ``__init__`` that the current configuration ignores (e.g. Crocodile's ``prior_fields`` under
    #: ``gating: mmoe``); the contract's field check skips them.
    unused_options: tuple = ()

    def field_selections(self) -> dict:
        """``{option: FieldSelection}`` of every model option that names fields (see
        :class:`~mdl_bench.model_zoo.layers.FieldSelection`); found on the model's attributes."""
        from .layers.embedding import FieldSelection

        return {v.option: v for v in vars(self).values() if isinstance(v, FieldSelection)}

    # ------------------------------------------------------------------ forward and loss
    def logits(self, X: dict[str, torch.Tensor], domain: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(logit of shape B, {name: weighted auxiliary loss})``. Implemented by every model."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        X = self.get_inputs(inputs)
        if self.training and self.embedding_regularizer_scope == "batch":
            self._batch_inputs = X  # the rows the batch-scope regulariser penalises
        domain = self.domain_of(X)
        logit, aux_losses = self.logits(X, domain)
        return {"y_pred": self.output_activation(logit).unsqueeze(-1), "logit": logit, "domain": domain,
                "aux_losses": aux_losses}

    def domain_bce(self, logit: torch.Tensor, y_true: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Eq. (8)'s first term: ``sum_s mean_{rows of s} BCE``; domains absent from the batch add nothing."""
        per_row = F.binary_cross_entropy_with_logits(logit, y_true.view(-1), reduction="none")
        sums = torch.zeros(self.num_domains, device=logit.device, dtype=per_row.dtype).index_add_(0, domain, per_row)
        counts = torch.bincount(domain, minlength=self.num_domains).to(per_row.dtype)
        return (sums / counts.clamp(min=1.0)).sum()

    def add_loss(self, return_dict: dict, y_true: torch.Tensor) -> torch.Tensor:
        """The BCE term (``loss_weighting``: ``domain`` = eq. 8's per-domain means summed, ``batch`` = the plain
        mean over the batch's rows) plus every auxiliary loss."""
        if self.loss_weighting == "batch":
            bce = F.binary_cross_entropy_with_logits(return_dict["logit"], y_true.view(-1))
        else:
            bce = self.domain_bce(return_dict["logit"], y_true, return_dict["domain"])
        terms = OrderedDict(bce=bce)
        terms.update(return_dict.get("aux_losses") or {})
        self._loss_terms = terms
        return sum(terms.values())

    def compile(self, optimizer, loss, lr):
        """FuxiCTR's ``compile``, except that Adam (by name) is PyTorch's fused kernel: the same update rule in one
        pass per parameter instead of about ten tensor operations, each a pass over every embedding table; its
        results equal the loop implementation's to float rounding."""
        super().compile(optimizer, loss, lr)
        if isinstance(optimizer, str) and optimizer.lower() == "adam":
            self.optimizer = torch.optim.Adam(self.parameters(), lr=lr, fused=True)

    def regularization_loss(self):
        """FuxiCTR's regularisers. ``embedding_regularizer_scope: table`` (FuxiCTR's) puts the embedding
        regulariser on whole tables every step; ``batch`` puts it on the rows the batch looks up only (each row
        once), so a row's penalty does not grow with the steps in which it is absent."""
        if self.embedding_regularizer_scope == "table" or not self.settings.embedding_regularizer:
            rows = None
        else:  # before any training forward there are no looked-up rows: no embedding penalty
            rows = self._batch_inputs if self._batch_inputs is not None else {}
        return regularizer([self], self.settings.embedding_regularizer, self.settings.net_regularizer, rows)

    # ------------------------------------------------------------------ training loop
    @property
    def max_gradient_norm(self) -> float:
        """The norm every step clips the gradients to (``__init__``'s, or the last ``fit``'s argument)."""
        return self._max_gradient_norm

    def fit(self, data_generator, epochs: int = 1, validation_data=None, max_gradient_norm: float | None = None,
            **kwargs) -> None:
        """Train for at most ``epochs`` epochs, validating on ``validation_data`` (when and how the model's
        options say), then load the best checkpoint. Other keyword arguments (a whole resolved config) are
        accepted and ignored, as FuxiCTR's ``fit`` does.

        ``max_gradient_norm`` replaces the model's when given. glibc is told to keep freed memory first: without
        it every CPU step page-faults its large tensors in afresh (see :mod:`mdl_bench.model_zoo.core.allocator`;
        ``mdl-bench perf`` measures it)."""
        allocator.keep_freed_memory()
        self.checkpoint_written = False  # fit ends by loading self.checkpoint: the runner checks it is this fit's
        if max_gradient_norm is not None:
            self._max_gradient_norm = float(max_gradient_norm)
        self.validation_data = validation_data
        self.state = training.TrainingState.start(len(data_generator), self.settings.eval_steps,
                                                  self.settings.monitor_mode)
        logging.info(f"Start training: {self.state.steps_per_epoch} batches/epoch")
        logging.info("************ Epoch=1 start ************")
        for epoch in range(int(epochs)):
            self.state.epoch = epoch
            self.train_epoch(data_generator)
            if self.state.stop:
                break
            logging.info(f"************ Epoch={epoch + 1} end ************")
        logging.info("Training finished.")
        self.restore_best()

    def restore_best(self) -> None:
        """The end of :meth:`fit`: load the checkpoint it kept (the best validation's weights)."""
        logging.info(f"Load best model: {self.checkpoint}")
        self.load_weights(self.checkpoint)

    @property
    def data_parallel(self):
        """The DDP wrapper of this model (:meth:`attach_data_parallel`), or ``None`` when training alone."""
        return self.__dict__.get("_data_parallel")

    def attach_data_parallel(self, wrapper) -> None:
        """Run every train step through ``wrapper`` (a ``DistributedDataParallel`` of this model), so gradients are
        all-reduced. Kept outside the module tree: as a submodule it would hold the model inside itself."""
        self.__dict__["_data_parallel"] = wrapper

    def train_step(self, batch_data: dict[str, torch.Tensor]) -> torch.Tensor:
        # Under DDP the step must go through the wrapper, or gradients are never all-reduced.
        return step_lib.train_step(self, batch_data, self._max_gradient_norm, module=self.data_parallel)

    def train_epoch(self, data_generator) -> None:
        """One epoch: the batches, each loss term logged, throughput counted, step callbacks, and the validations
        that fall inside it.

        A loader whose ranks may get different numbers of batches (``uneven``: streamed parts) runs under DDP's
        ``join`` (ranks that ran out shadow the others' gradient all-reduces) and is evaluated at the epoch end
        only, since per-rank step counts no longer line up."""
        self.state.batch = 0
        self.train()
        if hasattr(data_generator, "set_epoch"):
            data_generator.set_epoch(self.state.epoch)
        uneven = bool(getattr(data_generator, "uneven", False))
        ddp = self.data_parallel
        with (ddp.join(divide_by_initial_world_size=False) if uneven and ddp is not None
              else contextlib.nullcontext()):
            self._train_batches(data_generator, evaluate_inside=not uneven)
        collectives.sync_buffers(self)
        if uneven and not self.state.stop:
            self.eval_step()

    def _train_batches(self, data_generator, evaluate_inside: bool) -> None:
        """The batches of one epoch; adds their time (evaluation excluded) and rows to the counters and to
        :attr:`epoch_log`."""
        state = self.state
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        steps_since_log = 0
        batches = data_generator if self.settings.verbose == 0 else tqdm(data_generator, disable=False,
                                                                          file=sys.stderr)
        rows_before, seconds = self.train_rows, 0.0
        eval_points = self._evaluation_points(len(data_generator))
        tick = step_lib.now(self.device)
        for batch_index, batch_data in enumerate(batches):
            state.batch = batch_index
            state.total_steps += 1
            loss = self.train_step(batch_data)
            rows = int(next(iter(batch_data.values())).shape[0])
            self.train_rows += rows
            sums["loss"] += loss.detach()
            for name, value in self._loss_terms.items():
                sums[name] += value.detach()
            steps_since_log += 1
            for callback in self.step_callbacks:
                callback({"epoch": state.epoch, "batch": batch_index, "batches": len(data_generator), "rows": rows})
            if evaluate_inside and self._validates_after(batch_index, eval_points):
                seconds += step_lib.now(self.device) - tick
                self._log_train_loss(sums, steps_since_log)
                sums.clear()
                steps_since_log = 0
                self.eval_step()
                tick = step_lib.now(self.device)
            if state.stop:
                break
        seconds += step_lib.now(self.device) - tick
        self.train_seconds += seconds
        self.epoch_log.append({"epoch": state.epoch + 1, "seconds": seconds, "rows": self.train_rows - rows_before})
        if not evaluate_inside and steps_since_log:
            self._log_train_loss(sums, steps_since_log)

    def _validates_after(self, batch_index: int, eval_points: set[int] | None) -> bool:
        if eval_points is not None:
            return batch_index + 1 in eval_points
        return self.state.total_steps % self.state.eval_steps == 0

    def _evaluation_points(self, batches: int) -> set[int] | None:
        """With ``evaluations_per_epoch: n``, the batches (1-based) of an epoch of ``batches`` after which to
        validate: ``n`` evenly spaced, the last one the epoch's end; ``None`` = FuxiCTR's ``eval_steps`` rule."""
        if not self.evaluations_per_epoch:
            return None
        n = min(int(self.evaluations_per_epoch), max(1, batches))
        return {math.ceil(k * batches / n) for k in range(1, n + 1)}

    @staticmethod
    def _log_train_loss(sums: dict, steps: int) -> None:
        logging.info("Train loss: " + " - ".join(f"{k}: {float(v) / steps:.6f}" for k, v in sums.items()))

    @property
    def train_samples_per_second(self) -> float:
        return self.train_rows / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def best_epoch(self) -> int | None:
        """Epoch (from 1) of the checkpoint the last ``fit`` kept; ``None`` before ``fit``."""
        return None if self.state is None else self.state.best_epoch

    @property
    def stopped_by(self) -> str | None:
        """Why the last ``fit`` ended before early stopping or the epoch cap said so (a validation callback's
        reason), else ``None``."""
        return None if self.state is None else self.state.stopped_by

    def eval_step(self) -> None:
        """Validate, then checkpoint / early-stop on the monitor (:meth:`checkpoint_and_earlystop`)."""
        logging.info(f"Evaluation @epoch {self.state.epoch + 1} - batch {self.state.batch + 1}: ")
        logs = self.evaluate(self.validation_data, metrics=self.settings.monitor.get_metrics())
        self.checkpoint_and_earlystop(logs)
        self.train()

    def checkpoint_and_earlystop(self, logs, min_delta: float = training.MIN_DELTA) -> None:
        """FuxiCTR's rule (:func:`~mdl_bench.model_zoo.core.training.record_validation`): the checkpoint is
        written when the monitor improves; a plateau decays the learning rate (``reduce_lr_on_plateau``) and
        counts towards ``early_stop_patience``. Each validation goes to :attr:`valid_history` and to every
        validation callback, which may stop training."""
        settings, state = self.settings, self.state
        value = float(settings.monitor.get_value(logs))
        improved = training.record_validation(state, value, settings.monitor_mode, settings.early_stop_patience,
                                              min_delta)
        if improved:
            if settings.save_best_only:
                logging.info(f"Save best model: monitor({settings.monitor_mode})={value:.6f}")
                self.save_weights(self.checkpoint)
        else:
            logging.info(f"Monitor({settings.monitor_mode})={value:.6f} STOP!")
            if settings.reduce_lr_on_plateau:
                rate = training.decay_learning_rate(self.optimizer)
                logging.info(f"Reduce learning rate on plateau: {rate:.6f}")
        if state.stop:
            logging.info(f"********* Epoch={state.epoch + 1} early stop *********")
        if not settings.save_best_only:
            self.save_weights(self.checkpoint)
        entry = {"epoch": state.epoch + 1, "batch": state.batch + 1, "epoch_end": state.at_epoch_end,
                 "monitor": value, **{k: float(v) for k, v in logs.items()}}
        self.valid_history.append(entry)
        for callback in self.validation_callbacks:
            reason = callback(entry)
            if reason and not state.stop:
                state.stop, state.stopped_by = True, str(reason)
                logging.info(f"Training stopped: {reason}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_arrays(self, data_generator) -> dict[str, np.ndarray]:
        """Predictions with labels, domains and group ids of every row, as numpy arrays of shape ``N``.

        Under DDP each rank predicts its shard and the arrays are gathered in rank order (all rows, once)."""
        self.eval()
        collectives.sync_buffers(self)  # a mid-epoch evaluation must not use per-rank running statistics
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        group_id = self.feature_map.group_id
        batches = (data_generator if self.settings.verbose == 0
                   else tqdm(data_generator, disable=False, file=sys.stderr))
        for batch_data in batches:
            out = self.forward(batch_data)
            parts["y_pred"].append(out["y_pred"].view(-1).float().cpu())
            parts["domain"].append(out["domain"].cpu())
            if self.feature_map.labels[0] in batch_data:
                parts["y_true"].append(self.get_labels(batch_data).view(-1).cpu())
            if group_id is not None and group_id in batch_data:
                parts["group"].append(batch_data[group_id].view(-1).cpu())
        # a rank may hold no rows of a streamed split (fewer parts than ranks); it still joins the gather
        keys = ["y_pred", "domain"] + [k for k in ("y_true", "group") if k in parts or not parts and
                                       (k == "y_true" or group_id is not None)]
        dtypes = {"y_pred": torch.float32, "domain": torch.long, "y_true": torch.float32, "group": torch.long}
        return collectives.gather_arrays({k: (torch.cat(parts[k]) if k in parts else torch.zeros(0, dtype=dtypes[k]))
                                          .numpy() for k in keys})

    def predict(self, data_generator) -> np.ndarray:
        return self.predict_arrays(data_generator)["y_pred"].astype(np.float64)

    def evaluate(self, data_generator, metrics=None) -> "OrderedDict[str, float]":
        """Metrics overall and per domain. With ``metrics=None`` every configured metric is reported for the
        whole split and for each domain (``AUC``, ``AUC@S0``, ...); otherwise just the names given."""
        arrays = self.predict_arrays(data_generator)
        logs = self.evaluate_arrays(arrays, metrics)
        logging.info("[Metrics] " + " - ".join(f"{k}: {v:.6f}" for k, v in logs.items()))
        return logs

    def evaluate_arrays(self, arrays: dict[str, np.ndarray], metrics=None) -> "OrderedDict[str, float]":
        names = list(metrics) if metrics is not None else list(self.validation_metrics)
        return metric_lib.compute_metrics(names, arrays["y_true"], arrays["y_pred"], arrays["domain"],
                                          arrays.get("group"), self.domain_names, expand_domains=metrics is None)

    # ------------------------------------------------------------------ checkpoints
    def save_weights(self, checkpoint: str) -> None:
        """Write to a temporary file and rename, so a killed run never leaves a truncated checkpoint.

        Under DDP only rank 0 writes; every rank waits until the file is complete."""
        if collectives.current().is_main:
            os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
            tmp = f"{checkpoint}.tmp-{os.getpid()}"
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, checkpoint)
        collectives.barrier()
        self.checkpoint_written = True

    checkpoint_written: bool = False

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def capacity(self, batch_data: dict[str, torch.Tensor]) -> dict[str, float]:
        """Parameters (embedding tables and dense layers) and training FLOPs per row, measured on one batch
        (:mod:`mdl_bench.model_zoo.core.capacity`; the model is left as it was)."""
        from mdl_bench.model_zoo.core.capacity import parameter_counts, train_flops_per_row

        counts = parameter_counts(self)
        rows = int(next(iter(batch_data.values())).shape[0])
        flops = train_flops_per_row(self, lambda: self.compute_loss(self.forward(batch_data),
                                                                     self.get_labels(batch_data)), rows)
        return {"embedding_parameters": counts["embedding"], "dense_parameters": counts["dense"],
                "train_flops_per_row": flops}


def regularizer(modules: list[torch.nn.Module], embedding_regularizer, net_regularizer,
                batch_inputs: dict[str, torch.Tensor] | None = None):
    """FuxiCTR's regularisers over the parameters of ``modules``: ``sum (lambda / p) * ||w||_p^p``.

    The embedding regulariser covers the parameters of every ``FeatureEmbeddingDict`` (FuxiCTR's embedding
    parameters): with ``batch_inputs`` ``None`` the whole tables (FuxiCTR's ``regularization_loss`` restricted to
    ``modules``; scope ``table``), else only the rows of ``nn.Embedding`` tables that ``batch_inputs`` (``{field:
    ids of B rows}``) looks up, each row once (scope ``batch``; the other embedding parameters then go
    unpenalised). The net regulariser covers every other trainable parameter. Returns ``0`` when nothing is
    penalised, else a scalar tensor.
    """
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureEmbeddingDict, get_regularizer

    emb, net = get_regularizer(embedding_regularizer), get_regularizer(net_regularizer)
    reg = 0
    for module in modules:
        tables = [(name, sub) for name, sub in module.named_modules() if type(sub) is FeatureEmbeddingDict]
        emb_params = {f"{name}.{p_name}" if name else p_name
                      for name, sub in tables for p_name, _ in sub.named_parameters()}
        for _, sub in tables:
            if batch_inputs is None:
                reg = _add_penalty(reg, [p for p in sub.parameters() if p.requires_grad], emb)
            else:
                reg = _add_looked_up_rows_penalty(reg, sub, emb, batch_inputs)
        reg = _add_penalty(reg, [p for name, p in module.named_parameters()
                                 if p.requires_grad and name not in emb_params], net)
    return reg


def _add_penalty(reg, params: list[torch.Tensor], pairs: list):
    """``reg`` plus ``(lambda / p) * ||w||_p^p`` for every tensor ``w`` of ``params`` and every ``(p, lambda)`` of
    ``pairs``, added term by term in FuxiCTR's order (tensor by tensor)."""
    for param in params:
        for p, weight in pairs:
            reg = reg + (weight / p) * norm_power(param, p)
    return reg


class _SquaredL2(torch.autograd.Function):
    """``||w||_2^2`` as one dot product, gradient ``2 w``: one pass over ``w`` each way, where ``torch.norm(w) ** 2``
    takes a norm reduction, a square root and a backward of several passes (the whole-table embedding penalty is
    paid on every step, at every table size)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        flat = w.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return w * (2 * grad)


def norm_power(w: torch.Tensor, p: int | float) -> torch.Tensor:
    """``||w||_p^p`` (FuxiCTR's ``torch.norm(w, p) ** p``; for ``p = 2`` the same value to float rounding, faster)."""
    return _SquaredL2.apply(w) if p == 2 else torch.norm(w, p) ** p


def _add_looked_up_rows_penalty(reg, embedding_dict, emb: list, batch_inputs: dict[str, torch.Tensor]):
    """``reg`` plus the embedding regulariser ``emb`` (``[(p, lambda)]``) on the rows of each ``nn.Embedding``
    table of a ``FeatureEmbeddingDict`` that ``batch_inputs`` looks up, each row once (added term by term, in
    the order FuxiCTR adds its terms)."""
    for field, layer in embedding_dict.embedding_layers.items():
        if field not in batch_inputs or not isinstance(layer, torch.nn.Embedding):
            continue
        rows = layer.weight[batch_inputs[field].long().reshape(-1).unique()]
        for p, weight in emb:
            reg = reg + (weight / p) * norm_power(rows, p)
    return reg
