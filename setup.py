"""mdl-bench: a FuxiCTR plugin for multi-domain recommendation benchmarks (Crocodile and baselines).

The repository keeps FuxiCTR's top-level layout (``model_zoo/``, ``benchmark/``, ``config/``; ``kernel/`` holds
the errors and paths both stand on), but the
installed import names live under one namespace, ``mdl_bench``, so that generic names such as ``config`` or
``benchmark`` never shadow (or get shadowed by) a user's own folders.
"""
from setuptools import setup

PACKAGES = {
    "mdl_bench.kernel": "kernel",
    "mdl_bench.benchmark": "benchmark",
    "mdl_bench.benchmark.cli": "benchmark/cli",
    "mdl_bench.benchmark.data": "benchmark/data",
    "mdl_bench.benchmark.analysis": "benchmark/analysis",
    "mdl_bench.benchmark.measure": "benchmark/measure",
    "mdl_bench.benchmark.leaderboard": "benchmark/leaderboard",
    "mdl_bench.benchmark.suite": "benchmark/suite",
    "mdl_bench.benchmark.perf": "benchmark/perf",
    "mdl_bench.model_zoo": "model_zoo",
    "mdl_bench.model_zoo.layers": "model_zoo/layers",
    "mdl_bench.model_zoo.core": "model_zoo/core",
    "mdl_bench.config": "config",
}

setup(
    name="mdl-bench",
    version="0.1.0",
    description="Multi-domain CTR benchmark on FuxiCTR: Crocodile and ten baselines",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"mdl_bench.config": ["*.yaml", "suites/*.yaml"]},
    include_package_data=True,
    install_requires=[
        # Any torch 2.1+; install torch==2.13.0 first on CPU-only machines (see README).
        "torch>=2.1,<3",
        "fuxictr==2.3.10",
        "polars>=1.0,<2",  # polars 2 removed scan_csv(dtypes=), which FuxiCTR 2.3.10 uses
        "pyyaml>=6.0",
        "h5py",
        "scikit-learn",
        "numpy",
        "scipy",
        "tqdm",
        "pydantic>=2.5,<3",  # the typed config schema (benchmark/schema.py)
        "optuna>=4,<5",  # the tuning suites' sampler (TPE) and pruner (successive halving)
        "matplotlib",  # analysis figures (mdl-bench analyze), leaderboard plots (figure 8)
    ],
    extras_require={
        "test": ["pytest>=7"],
        # the documentation site: `mkdocs build --strict` (mkdocs.yml), API pages from the docstrings
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=1.0,<2"],
    },
    entry_points={"console_scripts": ["mdl-bench=mdl_bench.benchmark.cli:main"]},
)
