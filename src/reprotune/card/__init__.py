"""Model card rendering: front matter from ``huggingface_hub.ModelCardData``, body from Jinja."""
from .render import build_context, eval_rows, render, render_adapter

__all__ = ["build_context", "eval_rows", "render", "render_adapter"]
