"""Prefect flows, the pipelines.yaml loader and the ``cifar`` command line."""
