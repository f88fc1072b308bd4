"""The known lesion sets: one home for their licences, used by the dataset card and the model card alike."""

from skin_fusion.data.known_datasets import REAL_SETS, class_display_name, hub_license_of


def test_a_model_trained_on_a_known_set_takes_its_hub_licence():
    assert hub_license_of("../shared/data/ham10000") == "cc-by-nc-4.0"
    assert hub_license_of("someone/skin_cancer") == "cc-by-nc-4.0"  # the HAM10000 mirror on the Hub
    assert hub_license_of("/data/isic2017") == "cc0-1.0"


def test_an_unknown_set_gives_other():
    assert hub_license_of("/data/my-clinic-photos") == "other"


def test_every_known_set_has_a_folder_title_licence_and_citation():
    for real in REAL_SETS:
        assert real.folder and real.title and real.license and real.hub_license and real.citation


def test_results_name_a_known_class_for_people_and_keep_its_code():
    assert class_display_name("mel") == "melanoma (mel)"
    assert class_display_name("akiec") == "actinic keratosis / intraepithelial carcinoma (akiec)"
    assert class_display_name("actinic keratosis") == "actinic keratosis"  # other labels stay as they are
