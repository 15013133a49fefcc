"""The Dagster asset layer: thin wrappers that read the spec and call one flywheel function."""

from assets.agents import build_agent_assets
from assets.checks import build_document_checks
from assets.cycles import build_cycle_assets
from assets.documents import build_document_assets
from assets.images import build_image_assets
from assets.resources import FlywheelResource
from assets.training import build_training_assets

__all__ = [
    "FlywheelResource",
    "build_agent_assets",
    "build_cycle_assets",
    "build_document_assets",
    "build_document_checks",
    "build_image_assets",
    "build_training_assets",
]
