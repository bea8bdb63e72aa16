"""convai-monitor: keeps Convai model groups pointed at a healthy LLM endpoint."""

__version__ = "0.1.0"
