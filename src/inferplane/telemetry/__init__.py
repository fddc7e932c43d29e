"""Metric names and exporters."""

from inferplane.telemetry._genai import GatewayMetrics
from inferplane.telemetry._labels import BoundedLabel

__all__ = ["BoundedLabel", "GatewayMetrics"]
