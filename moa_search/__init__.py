"""moa_search: search Mixture-of-Agents configurations for quality, cost and latency."""

from .catalog import Catalog, ModelInfo
from .config import BUILTIN_PRESETS, AgentSpec, MoAConfig, Preset, builtin_preset
from .errors import ConfigError, MoASearchError
from .providers.base import ChatRequest, Completion, Message, Usage

__all__ = [
    "AgentSpec", "BUILTIN_PRESETS", "Catalog", "ChatRequest", "Completion", "ConfigError",
    "Message", "MoAConfig", "MoASearchError", "ModelInfo", "Preset", "Usage", "builtin_preset",
]
