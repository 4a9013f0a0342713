"""``datasets`` builders for the NAT/NUT/NAT-k variants."""

from lightning_nat.data.builders.nat_builder import (
    FEATURES,
    PRESETS,
    BuildResult,
    NATBuilder,
    NATConfig,
    build_dataset,
    save_build,
    summarize,
)

__all__ = ["FEATURES", "PRESETS", "BuildResult", "NATBuilder", "NATConfig", "build_dataset", "save_build", "summarize"]
