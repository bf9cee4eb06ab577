"""Providers answer ``ChatRequest``s: over HTTP (``openai_compat``) or in the simulated world."""

from .base import (AuthError, ChatRequest, Completion, ContextWindowError, MalformedReplyError, Message,
                   Provider, ProviderError, Usage)

__all__ = ["AuthError", "ChatRequest", "Completion", "ContextWindowError", "MalformedReplyError", "Message",
           "Provider", "ProviderError", "Usage"]
