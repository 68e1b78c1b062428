"""llmproxy: an OpenAI-compatible streaming reverse proxy with tiered failover."""

__version__ = "0.1.0"
