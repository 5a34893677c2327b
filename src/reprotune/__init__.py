"""reprotune: rebuild published fine-tuned LLMs from pinned recipes."""

__version__ = "0.1.0"
