"""Hand-crafted class templates for fixed text classifiers.

Two sets ship: ``"coop"`` (CoOp / CoCoOp / MaPLe / UPT releases, the default) and ``"provp"`` (the ProVP release,
which reorders some of them). Keys are the dataset registry names.
"""

from __future__ import annotations

from typing import Literal

TemplateSet = Literal["coop", "provp"]
DEFAULT = "a photo of a {}."

COOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
}

PROVP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a type of food, a photo of {}.",
    "UCF101": "a photo of a person doing {}.",
}


def dataset_template(dataset: str, template_set: TemplateSet = "coop") -> str:
    """The hand-crafted template of ``dataset`` in ``template_set`` (``"a photo of a {}."`` for all others)."""
    table = {"coop": COOP_TEMPLATES, "provp": PROVP_TEMPLATES}.get(template_set)
    if table is None:
        raise ValueError(f"unknown template_set {template_set!r}; choose 'coop' or 'provp'")
    return table.get(dataset, DEFAULT)
