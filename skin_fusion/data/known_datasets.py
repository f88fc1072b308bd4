"""The lesion data sets SkinFusion knows: their column-name conventions, licences and citations.

One home for what is true of a data set rather than of the code: the loader detects columns by these names, the
dataset card cites these sets, and a model card takes its licence from the set it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

# Column conventions of HAM10000 and ISIC, in order of preference; used when the caller names no column.
LABEL_CANDIDATES = ("dx", "label", "diagnosis")
NUMERIC_CANDIDATES = ("age", "age_approx")
CATEGORICAL_CANDIDATES = ("sex", "localization", "anatom_site_general")
GROUP_CANDIDATES = ("lesion_id", "patient_id")
SPLIT_CANDIDATES = ("split",)
IMAGE_REFERENCE_CANDIDATES = ("file_name", "image", "image_id")

# What the HAM10000 diagnosis codes stand for (Tschandl et al. 2018); results name a class by both.
CLASS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

# Columns that give the label away, and why; the loader refuses them as features.
LEAKY_COLUMNS = {
    "dx_type": "it records how the diagnosis was confirmed (histopathology, follow-up, consensus, confocal), which "
    "follows from the diagnosis itself (in HAM10000 every follow-up case is a nevus and every melanoma was confirmed "
    "by histopathology), so a model would read the label from it instead of from the lesion",
}

# Between the known sets: ISIC 2017 labels -> HAM10000 dx (for external validation of HAM10000 models).
ISIC2017_TO_HAM10000 = {"nevus": "nv", "melanoma": "mel", "seborrheic_keratosis": "bkl"}
# ISIC general anatomical sites -> HAM10000 localisations; sites that span several localisations (head/neck: face,
# scalp, ear or neck) become "not recorded" rather than a guess.
ISIC_SITE_TO_HAM10000 = {
    "anterior torso": "trunk", "lateral torso": "trunk", "posterior torso": "back",
    "lower extremity": "lower extremity", "upper extremity": "upper extremity", "palms/soles": "acral",
    "oral/genital": "genital",
}


def class_display_name(label: str) -> str:
    """How a result names a class for people: "melanoma (mel)" for a known code, any other label as it is."""
    name = CLASS_NAMES.get(label)
    return f"{name} ({label})" if name else label


@dataclass(frozen=True)
class RealSet:
    """A real lesion set SkinFusion supports: where it lives under a data root, its licence and citation.

    `hub_license` is the Hub licence identifier that binds models trained on it; `aliases` are other names the set
    goes by (a Hub mirror's name, say), matched like `folder` in a data source's path or id.
    """

    folder: str
    title: str
    license: str
    hub_license: str
    citation: str
    notes: str
    aliases: tuple[str, ...] = ()

    def matches(self, source: str) -> bool:
        """Whether a data source (path or Hub id) names this set."""
        return any(name in source.lower() for name in (self.folder, *self.aliases))


REAL_SETS = (
    RealSet(
        folder="ham10000",
        title="HAM10000",
        license="CC BY-NC 4.0 (non-commercial)",
        hub_license="cc-by-nc-4.0",
        citation="Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
        "dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018). "
        "https://doi.org/10.1038/sdata.2018.161",
        notes="Dermatoscopic images of pigmented lesions from two sites (Vienna, Austria and Queensland, Australia); "
        "several images of one lesion share a `lesion_id`. `dx_type` says how the diagnosis was confirmed.",
        aliases=("skin_cancer",),  # the HAM10000 mirror on the Hub
    ),
    RealSet(
        folder="isic2017",
        title="ISIC 2017 (lesion classification)",
        license="CC-0",
        hub_license="cc0-1.0",
        citation="Codella N. et al. Skin lesion analysis toward melanoma detection: a challenge at the 2017 ISBI, "
        "hosted by ISIC. arXiv:1710.05006.",
        notes="The ISBI 2017 challenge set with its official train / validation / test splits, kept as they are.",
    ),
    RealSet(
        folder="isic-seed3",
        title="isic-seed3",
        license="ISIC archive images (CC-0 / CC BY-NC, per image)",
        hub_license="other",
        citation="No paper; images from the ISIC archive (https://www.isic-archive.com), credit its contributors.",
        notes="The three classes of the original SkinFusion study, gathered from ISIC archive folders that are known "
        "to carry some label noise: treat results on it as indicative.",
    ),
)


def hub_license_of(source: str) -> str:
    """The Hub licence of the known set that `source` names; "other" for a set SkinFusion does not know."""
    return next((real.hub_license for real in REAL_SETS if real.matches(source)), "other")
