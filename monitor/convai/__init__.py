"""Convai's Custom LLM API: a typed async client for the four `/llm-models/*` calls."""

from monitor.convai.client import (
    ConvaiClient,
    ConvaiError,
    ConvaiReply,
    ConvaiUnreachable,
    ModelList,
    OnCall,
    RegisteredModel,
)

__all__ = [
    "ConvaiClient",
    "ConvaiError",
    "ConvaiReply",
    "ConvaiUnreachable",
    "ModelList",
    "OnCall",
    "RegisteredModel",
]
