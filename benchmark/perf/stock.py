"""The other side of ``mdl-bench perf``: FuxiCTR 2.3.10's stock pipeline, run in a child process.

Run as ``python -m mdl_bench.benchmark.perf.stock TASK SPEC.json OUT.json`` by :mod:`.measure`, so that its Ray
processes, its memory and its allocator settings are its own (the parent samples the child's process tree). Tasks:

* ``train``: FuxiCTR's ``RankDataLoader`` (its default path for built parquet data: ``ParquetDataLoader`` on
  Ray Data) and ``BaseModel.fit`` on architecture-matched models built from FuxiCTR's own layers, the way
  FuxiCTR's model zoo builds them: :class:`StockDNN` (``FeatureEmbedding`` + ``MLP_Block``) and
  :class:`StockMMoE` (a list of ``MLP_Block`` experts, one gate and one tower per domain, every tower on every
  row and each row's own domain's output kept). Also the same models' bare loop on batches already in memory
  (:func:`.timing.bare_loop`: the one training step that this package's models and measurements run too).
* ``build_fuxictr``: ``fuxictr.preprocess.build_dataset`` on raw CSV files.
* ``build_project``: this package's build (:func:`mdl_bench.benchmark.data.build.ensure_dataset`) on the same files.

Each task writes a JSON result; times are taken around the work only (imports excluded). The epoch times come
from :class:`TimedEpochs`, a subclass of the stock models: FuxiCTR cannot be changed, and replacing methods on an
instance would hide what runs. Everything beyond the standard library is imported inside the tasks, so that a
build's peak memory counts what that build loads and nothing of this module (FuxiCTR's build never loads torch).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings


def _now(device) -> float:
    from mdl_bench.model_zoo.core.step import now  # imported late (torch): see the module docstring

    return now(device)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, force=True)


# ---------------------------------------------------------------------------------------------- stock models
class TimedEpochs:
    """Mixin ahead of a FuxiCTR ``BaseModel`` subclass: FuxiCTR's own ``train_epoch`` and ``eval_step``, timed.

    The timing is a subclass override that calls FuxiCTR's method (``super()``) between two clock readings, not a
    replacement of methods on an instance. ``epoch_seconds`` gets one entry per epoch, with the time of the
    evaluations inside it (FuxiCTR evaluates from within ``train_epoch``) taken out.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch_seconds: list[float] = []
        self.eval_seconds = 0.0

    def eval_step(self) -> None:
        tick = _now(self.device)
        super().eval_step()
        self.eval_seconds += _now(self.device) - tick

    def train_epoch(self, data_generator) -> None:
        eval_before, tick = self.eval_seconds, _now(self.device)
        super().train_epoch(data_generator)
        self.epoch_seconds.append(_now(self.device) - tick - (self.eval_seconds - eval_before))


def stock_classes():
    """``(StockDNN, StockMMoE)``: plain FuxiCTR models (torch is imported here, after the child has started)."""
    import torch
    from torch import nn
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureEmbedding, MLP_Block
    from mdl_bench.model_zoo.core.fuxictr_api import BaseModel

    class StockDNN(BaseModel):
        """FuxiCTR's DNN: embeddings of all fields, concatenated, one MLP to a logit, sigmoid."""

        def __init__(self, feature_map, model_id="StockDNN", gpu=-1, learning_rate=1e-3, embedding_dim=16,
                     hidden_units=(256, 128, 64), **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, **kwargs)
            self.embedding = FeatureEmbedding(feature_map, embedding_dim)
            self.mlp = MLP_Block(feature_map.sum_emb_out_dim(), list(hidden_units), hidden_activations="ReLU",
                                 output_dim=1)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding(X, flatten_emb=True)
            return {"y_pred": self.output_activation(self.mlp(emb))}

    class StockMMoE(BaseModel):
        """FuxiCTR's MMoE layout with domains for tasks: E expert MLPs, per domain a softmax gate and a tower."""

        def __init__(self, feature_map, model_id="StockMMoE", gpu=-1, learning_rate=1e-3, embedding_dim=16,
                     num_domains=5, domain_field="domain", domain_lookup=None, num_experts=None,
                     expert_hidden_units=(256, 128), tower_hidden_units=(64,), **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, **kwargs)
            E = num_experts or num_domains
            self.domain_field = domain_field
            self.register_buffer("domain_lookup", torch.tensor(domain_lookup, dtype=torch.long), persistent=False)
            self.embedding = FeatureEmbedding(feature_map, embedding_dim)
            d_in = feature_map.sum_emb_out_dim()
            self.experts = nn.ModuleList([MLP_Block(d_in, list(expert_hidden_units), hidden_activations="ReLU")
                                          for _ in range(E)])
            self.gates = nn.ModuleList([MLP_Block(d_in, [], output_dim=E) for _ in range(num_domains)])
            self.towers = nn.ModuleList([MLP_Block(expert_hidden_units[-1], list(tower_hidden_units),
                                                   hidden_activations="ReLU", output_dim=1)
                                         for _ in range(num_domains)])
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            x = self.embedding(X, flatten_emb=True)
            experts = torch.stack([e(x) for e in self.experts], dim=1)  # B x E x H
            logits = []
            for gate, tower in zip(self.gates, self.towers):
                weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # B x E x 1
                logits.append(tower((weights * experts).sum(dim=1)))
            logit = torch.cat(logits, dim=1)  # B x K
            own = self.domain_lookup[X[self.domain_field].long()].view(-1, 1)
            return {"y_pred": self.output_activation(logit.gather(1, own))}

    return StockDNN, StockMMoE


def _domain_lookup(data_dir: str, field: str, domains: list) -> list[int]:
    with open(os.path.join(data_dir, "feature_vocab.json"), encoding="utf-8") as fh:
        vocab = json.load(fh)[field]
    lookup = [0] * (max(vocab.values()) + 1)
    for index, value in enumerate(domains):
        lookup[vocab[str(value)]] = index
    return lookup


def task_train(spec: dict) -> dict:
    """Stock training of each matched model: ``epochs`` full epochs through RankDataLoader + fit."""
    import itertools
    import torch
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureMap
    from mdl_bench.model_zoo.core.fuxictr_api import RankDataLoader
    from mdl_bench.model_zoo.core.fuxictr_api import seed_everything

    from .timing import DEFAULT_MAX_NORM, bare_loop, batch_rows

    StockDNN, StockMMoE = stock_classes()

    class TimedStockDNN(TimedEpochs, StockDNN):
        """StockDNN with timed epochs."""

    class TimedStockMMoE(TimedEpochs, StockMMoE):
        """StockMMoE with timed epochs."""

    feature_map = FeatureMap(spec["dataset_id"], spec["data_dir"])
    feature_map.load(os.path.join(spec["data_dir"], "feature_map.json"),
                     {"embedding_dim": spec["embedding_dim"], "group_id": spec.get("group_id")})
    tick = time.perf_counter()
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", train_data=spec["train_data"],
                                          valid_data=spec["valid_data"], batch_size=spec["batch_size"],
                                          shuffle=True, data_format="parquet")
    loader_seconds = time.perf_counter() - tick
    common = dict(gpu=-1, learning_rate=1e-3, embedding_dim=spec["embedding_dim"], optimizer="adam",
                  loss="binary_crossentropy", metrics=["AUC"], monitor="AUC", verbose=0,
                  model_root=spec["model_root"], embedding_regularizer=spec.get("embedding_regularizer"),
                  net_regularizer=spec.get("net_regularizer"), early_stop_patience=1000,
                  reduce_lr_on_plateau=False)
    lookup = _domain_lookup(spec["data_dir"], spec["domain_field"], spec["domains"])
    builders = {
        "DNN": lambda: TimedStockDNN(feature_map, hidden_units=spec["dnn_hidden_units"], **common),
        "MMoE": lambda: TimedStockMMoE(feature_map, num_domains=len(spec["domains"]),
                                       num_experts=spec.get("num_experts"),
                                       domain_field=spec["domain_field"], domain_lookup=lookup,
                                       expert_hidden_units=spec["expert_hidden_units"],
                                       tower_hidden_units=spec["tower_hidden_units"], **common),
    }
    results = {}
    for name in spec["models"]:
        seed_everything(int(spec.get("seed", 2024)))
        model = builders[name]()
        os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR creates it in set_logger(), which we do not call
        model.fit(train_gen, epochs=spec["epochs"], validation_data=valid_gen, max_gradient_norm=DEFAULT_MAX_NORM)
        rows = train_gen.num_samples
        batches = list(itertools.islice(iter(train_gen), spec["bare_batches"]))
        bare_loop(model, batches[:1], DEFAULT_MAX_NORM)  # warm-up step
        bare = bare_loop(model, batches, DEFAULT_MAX_NORM)
        results[name] = {
            "epoch_seconds": model.epoch_seconds, "rows_per_epoch": rows,
            "samples_per_second": [rows / s for s in model.epoch_seconds],
            "bare_step_seconds": bare, "bare_rows": [batch_rows(b) for b in batches],
            "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        del model
    import ray

    initialized = bool(ray.is_initialized())
    ray.shutdown()
    return {"models": results, "loader_seconds": loader_seconds, "ray_initialized": initialized,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- builds
def task_build_fuxictr(spec: dict) -> dict:
    from mdl_bench.model_zoo.core.fuxictr_api import FeatureProcessor, build_dataset

    tick = time.perf_counter()
    processor = FeatureProcessor(feature_cols=spec["feature_cols"], label_col=spec["label_col"],
                                 dataset_id=spec["dataset_id"], data_root=spec["data_root"],
                                 group_id=spec.get("group_id"))
    build_dataset(processor, train_data=spec["train_data"], valid_data=spec["valid_data"],
                  test_data=spec["test_data"], min_categr_count=spec["min_categr_count"])
    return {"seconds": time.perf_counter() - tick}


def task_build_project(spec: dict) -> dict:
    from mdl_bench.benchmark.data.build import ensure_dataset

    params = dict(spec, data_format="csv")
    tick = time.perf_counter()
    ensure_dataset(params, log=lambda message: None)
    return {"seconds": time.perf_counter() - tick}


TASKS = {"train": task_train, "build_fuxictr": task_build_fuxictr, "build_project": task_build_project}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task, spec_path, out_path = argv
    _quiet()
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    result = TASKS[task](spec)
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
