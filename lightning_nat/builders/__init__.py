"""``lightning_nat.builders``: the name the design card and the README use for the dataset builder."""

from lightning_nat.data.build import PRESETS, BuildResult, BuildSpec, NATBuilder, NATConfig, build_dataset, save_build

__all__ = ["PRESETS", "BuildResult", "BuildSpec", "NATBuilder", "NATConfig", "build_dataset", "save_build"]
