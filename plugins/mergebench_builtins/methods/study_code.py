"""Pieces of the study's released code that its methods share, for their ``study-code`` forms.

The study (uiuctml/MergeBench at b245648, ``merging/``) flattens every parameter whose name has no
``embed`` into one vector (``utils.py:9-28``), so an untied ``lm_head`` (Llama-3.1-8B) joins the
task vectors and every global statistic over them, but ``vector_to_state_dict`` never writes its
delta back (``utils.py:35``): the head counts in TIES' and Localize-and-Stitch's global top-k
without being merged. These helpers give a method that view; docs/fidelity.md lists the rest.
"""

from __future__ import annotations

import re

from mergebench.merging.api import TensorInputs

HEAD = re.compile(r"(^|\.)lm_head\.")


def with_untied_head(inputs: TensorInputs) -> TensorInputs:
    """``inputs`` plus a stored ``lm_head`` the merge leaves out.

    A stored head is an untied one: transformers' ``save_pretrained`` drops a head tied to the
    embeddings, and the study's ``named_parameters()`` lists a tied one only as the embedding.
    """
    names = inputs.names()
    extra = [n for n in inputs.available() if HEAD.search(n) and n not in names]
    return inputs.with_names(names + extra) if extra else inputs
