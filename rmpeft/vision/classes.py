"""Class names and prompt templates of the image-classification tasks.

The lists follow the zero-shot setup of Ilharco et al. (2023, task arithmetic), which the paper's
vision experiments use: the classification head of a task is built from the CLIP text encoder's
embeddings of ``template.format(c=name)`` for every class name and template. Class order is the
label order of the datasets (for ImageFolder copies: the sorted class-folder order).
"""

from __future__ import annotations

from dataclasses import dataclass

from rmpeft.errors import unknown_choice

_PHOTO = ("a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
          "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
          "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.")
_NUMBER = ('a photo of the number: "{c}".',)
_DIGITS = tuple(str(i) for i in range(10))
_AERIAL = tuple(f"{kind} {view} of {article}{{c}}." for article in ("", "a ", "the ")
                for view, kind in (("imagery", "satellite"), ("imagery", "aerial"), ("photo", "satellite"),
                                   ("photo", "aerial"), ("view", "satellite"), ("view", "aerial")))


@dataclass(frozen=True)
class ClassSpec:
    """The label names of a task and the prompt templates (``{c}`` = class name) of its head."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def prompts(self, classname: str) -> list[str]:
        return [t.format(c=classname) for t in self.templates]


CLASS_SPECS: dict[str, ClassSpec] = {
    "cifar10": ClassSpec(
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        _PHOTO + tuple(t.replace("of a ", "of the ") for t in _PHOTO)),
    "mnist": ClassSpec(_DIGITS, _NUMBER),
    "svhn": ClassSpec(_DIGITS, _NUMBER),
    "digits": ClassSpec(_DIGITS, _NUMBER),
    "gtsrb": ClassSpec(
        ("red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
         "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
         "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
         "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
         "red and white circle 120 kph speed limit", "red and white circle red car and black car no passing",
         "red and white circle red truck and black car no passing", "red and white triangle road intersection warning",
         "white and yellow diamond priority road", "red and white upside down triangle yield right-of-way", "stop",
         "empty red and white circle", "red and white circle no truck entry",
         "red circle with white horizonal stripe no entry", "red and white triangle with exclamation mark warning",
         "red and white triangle with black left curve approaching warning",
         "red and white triangle with black right curve approaching warning",
         "red and white triangle with black double curve approaching warning",
         "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
         "red and white triangle with merging / narrow lanes warning",
         "red and white triangle with person digging / construction / road work warning",
         "red and white triangle with traffic light approaching warning",
         "red and white triangle with person walking warning",
         "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
         "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
         "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
         "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
         "blue circle with white forward or right turn arrow mandatory",
         "blue circle with white forward or left turn arrow mandatory",
         "blue circle with white keep right arrow mandatory", "blue circle with white keep left arrow mandatory",
         "blue circle with white arrows indicating a traffic circle",
         "white circle with gray strike bar indicating no passing for cars has ended",
         "white circle with gray strike bar indicating no passing for trucks has ended"),
        tuple(f'a {view} photo of a "{{c}}" traffic sign.' for view in ("zoomed in", "centered", "close up"))),
    "resisc45": ClassSpec(
        ("airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral", "church",
         "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest", "freeway",
         "golf course", "ground track field", "harbor", "industrial area", "intersection", "island", "lake",
         "meadow", "medium residential", "mobile home park", "mountain", "overpass", "palace", "parking lot",
         "railway", "railway station", "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship",
         "snowberg", "sparse residential", "stadium", "storage tank", "tennis court", "terrace",
         "thermal power station", "wetland"),
        _AERIAL),
}


def class_spec(task: str) -> ClassSpec:
    """The class names and templates of ``task`` (one of :data:`CLASS_SPECS`)."""
    if task not in CLASS_SPECS:
        raise unknown_choice("image task", task, CLASS_SPECS)
    return CLASS_SPECS[task]
