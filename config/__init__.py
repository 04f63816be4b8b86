"""Packaged experiment configs: ``dataset_config.yaml``, ``model_config.yaml`` and ``suites/``."""
