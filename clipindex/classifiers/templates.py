"""Prompt templates for zero-shot classification.

Two named template sets ship with clipindex:

- ``"default"``: the study's single template ``"a photo of a {}"``;
- ``"imagenet"``: the 80 ImageNet templates of the CLIP paper's prompt-engineering
  notebook (Radford et al., 2021), written out here so no download is ever needed.

A template is a ``str.format`` pattern with exactly one ``{}`` where the class name goes.

Example
-------
>>> from clipindex.classifiers.templates import get_templates, fill_templates
>>> fill_templates(get_templates("default"), ["cat", "dog"])
[['a photo of a cat'], ['a photo of a dog']]
"""

from __future__ import annotations

from collections.abc import Sequence

from clipindex.errors import UserInputError

__all__ = [
    "DEFAULT_TEMPLATE",
    "IMAGENET_TEMPLATES",
    "TEMPLATE_SETS",
    "get_templates",
    "check_template",
    "fill_templates",
]

DEFAULT_TEMPLATE = "a photo of a {}"

# The 80 templates of CLIP's "Prompt_Engineering_for_ImageNet.ipynb", in its order.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": (DEFAULT_TEMPLATE,),
    "imagenet": IMAGENET_TEMPLATES,
}


def get_templates(name: str) -> tuple[str, ...]:
    """Return a named template set.

    Parameters
    ----------
    name : str
        ``"default"`` or ``"imagenet"``.

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> len(get_templates("imagenet"))
    80
    """
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATE_SETS))
        raise UserInputError(f"Unknown template set {name!r}. Known: {known}.") from None


def check_template(template: str) -> str:
    """Return ``template`` if it holds exactly one ``{}`` for the class name, else raise.

    Examples
    --------
    >>> check_template("this is a photo of a {}.")
    'this is a photo of a {}.'
    """
    if not isinstance(template, str) or template.count("{}") != 1:
        raise UserInputError(
            f"Prompt template {template!r} must contain exactly one '{{}}' where the class "
            "name goes, e.g. 'a photo of a {}'."
        )
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise UserInputError(
            f"Prompt template {template!r} has braces other than one '{{}}'; "
            "double any literal brace ('{{' or '}}')."
        ) from None
    return template


def fill_templates(templates: Sequence[str], classes: Sequence[str]) -> list[list[str]]:
    """Fill every template with every class name: one list of prompts per class.

    Examples
    --------
    >>> fill_templates(["a {}", "the {}"], ["cow"])
    [['a cow', 'the cow']]
    """
    if isinstance(templates, str):
        templates = [templates]
    if len(templates) == 0:
        raise UserInputError("Give at least one prompt template, e.g. 'a photo of a {}'.")
    checked = [check_template(t) for t in templates]
    return [[t.format(c) for t in checked] for c in classes]
