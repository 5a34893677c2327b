"""Document processing for the tiny_* tasks (same logic as lm-eval's own tasks)."""
from __future__ import annotations

import re

import numpy as np


def _clean_hellaswag(text: str) -> str:
    # WikiHow-derived items carry bracketed markup ("[title]", "[step]", ...)
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(dataset):
    def one(doc):
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _clean_hellaswag(doc["activity_label"] + ": " + context),
            "choices": [_clean_hellaswag(e) for e in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


def truthfulqa_mc2_process_results(doc, results):
    # results: one (loglikelihood, is_greedy) pair per mc2 choice
    loglik = np.array([r[0] for r in results], dtype=np.float64)
    probs = np.exp(loglik)
    probs = probs / probs.sum()
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum())}


# Winogrande is scored by "partial evaluation": the choices are the two sentence
# prefixes (up to the blank, filled with each option) and the target is the shared
# continuation after the blank; the context index is the gold option.
def winogrande_doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc):
    cut = doc["sentence"].index("_") + 1
    return doc["sentence"][cut:].strip()


def winogrande_doc_to_choice(doc):
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + option for option in (doc["option1"], doc["option2"])]
