"""Local lm-eval task configs (see ``tiny/README.md``)."""
