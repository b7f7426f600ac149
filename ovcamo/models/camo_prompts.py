"""CamoPrompts: the camouflage prompt templates and the template-ensembled class embedding
(docs/design.md, "BaCLIP")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: The six CamoPrompts sentences; ``{}`` is the class name, kept byte-exact.
CAMO_PROMPTS: tuple[str, ...] = (
    "A photo of the camouflaged {}.",
    "A photo of the concealed {}.",
    "A photo of the {} camouflaged in the background.",
    "A photo of the {} concealed in the background.",
    "A photo of the {} camouflaged to blend in with its surroundings.",
    "A photo of the {} concealed to blend in with its surroundings.",
)


def class_prompts(class_name: str, templates: Sequence[str] = CAMO_PROMPTS) -> list[str]:
    """The prompt sentences of one class."""
    return [t.format(class_name) for t in templates]


@torch.no_grad()
def class_text_embeddings(
    clip_model: torch.nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = CAMO_PROMPTS,
) -> Tensor:
    """Template-ensembled class embeddings ``K×D`` (K = ``len(class_names)``), L2-normalised.

    Each class's ``T`` prompts are encoded with ``clip_model.encode_text``, L2-normalised, averaged
    and normalised again (CLIP's prompt ensembling, with the CamoPrompts templates). Runs on the
    device of the model's parameters, in eval mode, without autograd; the model's train/eval state is
    restored afterwards.
    """
    if not class_names:
        raise ValueError("class_names is empty: give at least one class name")
    if not templates:
        raise ValueError("templates is empty: give at least one prompt template")
    device = next(clip_model.parameters()).device
    sentences = [s for name in class_names for s in class_prompts(name, templates)]
    was_training = clip_model.training
    clip_model.eval()
    try:
        tokens = tokenizer(sentences).to(device)
        emb = F.normalize(clip_model.encode_text(tokens).float(), dim=-1)
    finally:
        clip_model.train(was_training)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)
