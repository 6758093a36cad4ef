"""Stain normalisation before the encoder, on patches of the real slides read as extraction reads
them: the normalised patches carry the reference's stains, background patches pass unharmed,
feature-set names map to their encoder, and bad settings stop the plan."""

import cv2
import h5py
import numpy as np
import pytest
import torch
import yaml

from extractors.batch import BatchSlide, slide_recipe
from extractors.encoders import get_encoder_spec, list_encoders
from extractors.errors import SettingsError
from extractors.extract import ExtractionOptions, extract_slide, patch_geometry
from extractors.io import read_coords, write_coords
from extractors.patches import PatchBlocks, collate_blocks
from extractors.stain import (
    FEATURE_SET_PATTERN,
    MIN_TISSUE_FRACTION,
    STAIN_METHODS,
    feature_set,
    split_feature_set,
    tissue_fraction,
)
from extractors.stain_norm import (
    NORMALISERS,
    MacenkoNormaliser,
    ReinhardNormaliser,
    create_normaliser,
    lab_statistics,
    lab_to_rgb,
    macenko_estimate,
    rgb_to_lab,
)
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide
from querent.pipeline.plan import CohortInputs, Findings, check_registries, plan_workflow
from querent.pipeline.registries import read_registries
from querent.schemas import COHORT_SCHEMA, CONFIG_SCHEMA
from querent.schemas.validation import check_config
from tests.helpers import default_config, shared_slide

SCHEMA = yaml.safe_load(CONFIG_SCHEMA.read_text())
WHERE = CohortInputs(
    "resources/demo/cohort.csv",
    "results/features/{encoder}",
    yaml.safe_load(COHORT_SCHEMA.read_text()),
)


@pytest.fixture(scope="module")
def cmu_tiles(tmp_path_factory):
    """CMU-1-Small-Region tiled with every lattice cell that touches its tissue (a few are
    background): (slide, coords file, uint8 patches as the encoder gets them, in row order)."""
    slide = shared_slide("cmu-1-small-region.svs")
    out = tmp_path_factory.mktemp("stain_tiles") / "coords.h5"
    with Slide(slide) as opened:
        polygons = tissue.segment(opened, tissue.tissue_params()).polygons
        params = tiling.TilingParams(min_tissue_fraction=0.0)
        tiling.tile_slide(opened, polygons, params, out, out.with_suffix(".jpg"))
    coords, attrs = read_coords(out)
    geometry = patch_geometry(attrs, get_encoder_spec("efficientnet_lite0"))
    dataset = PatchBlocks(slide, {}, coords, geometry)
    indices, patches, _ = collate_blocks([dataset[i] for i in range(len(dataset))])
    return slide, out, patches[indices.argsort()]


@pytest.fixture(scope="module")
def stained(cmu_tiles):
    """The patches with enough tissue to normalise, the others (background), and which rows of
    the coords file are which (True: enough tissue)."""
    patches = cmu_tiles[2]
    fractions = [tissue_fraction(p.permute(1, 2, 0).numpy()) for p in patches]
    enough = torch.tensor(fractions) >= MIN_TISSUE_FRACTION
    assert enough.sum() >= 20 and (~enough).sum() >= 1  # both kinds are on the real slide
    return patches[enough], patches[~enough], enough.numpy()


@pytest.fixture(scope="module")
def tcga_target(tmp_path_factory):
    """A 512 px region of the TCGA frozen section (another lab's H&E), the most tissue-rich
    one found on its level 1, as a PNG reference image."""
    with Slide(shared_slide("tcga-cr-7395-01a-01-ts1.svs"), mpp_override=0.5) as slide:
        downsample = 2
        width, height = (side // downsample for side in slide.dimensions)
        overview = slide.read_region((0, 0), 1, (width, height))
        counts = cv2.integral((overview.max(axis=-1) <= 205).astype(np.float32))
        side = 256
        windows = (counts[side:, side:] - counts[:-side, side:] - counts[side:, :-side]) + counts[
            :-side, :-side
        ]
        y, x = np.unravel_index(np.argmax(windows), windows.shape)
        region = slide.read_region((int(x) * downsample, int(y) * downsample), 0, (512, 512))
    path = tmp_path_factory.mktemp("stain_target") / "tcga.png"
    cv2.imwrite(str(path), cv2.cvtColor(region, cv2.COLOR_RGB2BGR))
    return path


def _angles(stains: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Degrees between each patch's stain vectors (n, c, s) and the reference's (c, s)."""
    cosine = torch.nn.functional.cosine_similarity(stains, reference.expand_as(stains), dim=1)
    return torch.rad2deg(torch.acos(cosine.clamp(-1, 1)))  # (n, s)


# --- names and settings -------------------------------------------------------------------


@pytest.mark.parametrize("encoder", list_encoders())
def test_each_feature_set_name_maps_back_to_its_encoder(encoder):
    import re

    assert feature_set(encoder, "none") == encoder
    for method in ("none", *STAIN_METHODS):
        name = feature_set(encoder, method)
        assert re.fullmatch(FEATURE_SET_PATTERN, name)
        assert split_feature_set(name) == (encoder, method)
    for wrong in (f"{encoder}-vahadane", f"{encoder}-", f"{encoder}-macenko-reinhard"):
        with pytest.raises(SettingsError, match="feature-set name"):
            split_feature_set(wrong)


def test_the_schema_offers_exactly_the_methods_that_exist():
    node = SCHEMA["properties"]["features"]["properties"]["stain_norm"]
    assert node["items"]["enum"] == ["none", *STAIN_METHODS] == ["none", *NORMALISERS]
    assert node["pattern"] == f"^({'|'.join(node['items']['enum'])})$"
    assert node["default"] == "none" and create_normaliser("none") is None


def _plan(features, tmp_path):
    findings = Findings()
    config = default_config(features=features)
    plan = plan_workflow(
        config,
        demo_slides="resources/demo/slides/{slide}.svs",
        where=WHERE,
        mpp_cache=tmp_path / "mpp.json",
        findings=findings,
    )
    return config, plan, findings


def test_the_plan_adds_normalised_feature_sets_and_checks_their_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, plan, findings = _plan({"stain_norm": ["none", "macenko"]}, tmp_path)
    assert plan.encoders == ["efficientnet_lite0", "efficientnet_lite0-macenko"]
    check_registries(config, plan.inputs, plan.encoders, read_registries({}), findings)
    assert findings.problems == []


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("missing", "does not exist"),
        ("not_an_image", "not an image"),
        ("background", "too little"),
        ("reinhard_without_target", "needs a reference image"),
        ("with_features_dir", "features.dir"),
    ],
)
def test_bad_stain_settings_stop_the_plan_with_the_key_and_the_fix(
    case, named, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    features = {"stain_norm": "macenko"}
    if case == "missing":
        features["stain_target"] = str(tmp_path / "nowhere.png")
    elif case == "not_an_image":
        (tmp_path / "notes.png").write_text("not pixels")
        features["stain_target"] = str(tmp_path / "notes.png")
    elif case == "background":
        cv2.imwrite(str(tmp_path / "white.png"), np.full((64, 64, 3), 245, np.uint8))
        features["stain_target"] = str(tmp_path / "white.png")
    elif case == "reinhard_without_target":
        features["stain_norm"] = ["none", "reinhard"]
    else:
        (tmp_path / "own").mkdir()
        features["dir"] = str(tmp_path / "own")
    _, _, findings = _plan(features, tmp_path)
    stain = [p for p in findings.problems if "features.stain_" in p]
    assert len(stain) == 1 and named in stain[0] and "Fix:" in stain[0]


@pytest.mark.parametrize("value", ["vahadane", ["none", "vahadane"], []])
def test_an_unknown_method_is_refused_by_the_schema_with_the_choices(value):
    problems, _ = check_config({"features": {"stain_norm": value}}, SCHEMA)
    assert len(problems) == 1 and problems[0].startswith("features.stain_norm")
    assert value == [] or "reinhard" in problems[0]  # the names allowed


# --- the normalisers on real patches --------------------------------------------------------


def test_macenko_normalises_batches_as_torchstain_does_one_patch(stained):
    """The batched version gives the one-image-at-a-time implementation's pixels."""
    torchstain = pytest.importorskip("torchstain.torch")
    patches = stained[0][:3]
    reference = torchstain.normalizers.TorchMacenkoNormalizer()  # the same built-in stains
    normalised, ok = MacenkoNormaliser()(patches)
    assert ok.all()
    for ours, patch in zip(normalised, patches, strict=True):
        theirs, _, _ = reference.normalize(patch.contiguous(), stains=False)
        difference = (ours.permute(1, 2, 0).int() - theirs).abs()
        # theirs truncates where we round: one level apart at most, for the rounding alone
        assert difference.float().quantile(0.999) <= 1


@pytest.mark.parametrize("target", ["built-in", "tcga"])
def test_macenko_normalised_patches_carry_the_target_stains(stained, tcga_target, target):
    patches = stained[0]
    normaliser = MacenkoNormaliser(tcga_target if target == "tcga" else None)
    reference = normaliser.stains / normaliser.stains.norm(dim=0)
    before = macenko_estimate(patches)
    normalised, ok = normaliser(patches)
    after = macenko_estimate(normalised)
    assert ok.all() and after.ok.all()
    far, near = _angles(before.stains, reference), _angles(after.stains, reference)
    assert (near.median(dim=0).values < 2).all()  # degrees, haematoxylin and eosin
    assert near.mean(dim=1).median() * 4 < far.mean(dim=1).median()
    ratio = (after.maxima / normaliser.max_concentrations).median(dim=0).values
    assert torch.allclose(ratio, torch.ones(2), atol=0.1)


def test_reinhard_normalised_patches_carry_the_target_colour_statistics(stained, tcga_target):
    patches = stained[0]
    normaliser = ReinhardNormaliser(tcga_target)
    _, mean_before, _ = lab_statistics(patches)
    normalised, ok = normaliser(patches)
    _, mean_after, spread_after = lab_statistics(normalised)
    assert ok.all()
    off_before = (mean_before - normaliser.mean).abs().median(dim=0).values
    off_after = (mean_after - normaliser.mean).abs().median(dim=0).values
    assert (off_after < 1.5).all() and (off_after * 5 < off_before).all()
    spread = (spread_after / normaliser.spread).median(dim=0).values
    assert torch.allclose(spread, torch.ones(3), atol=0.15)  # clipping to 0..255 trims it


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_background_patches_pass_as_read_beside_normalised_ones(stained, tcga_target, method):
    tissue_patches, background, _ = stained
    batch = torch.cat([tissue_patches[:3], background]).contiguous(
        memory_format=torch.channels_last
    )
    out, ok = create_normaliser(method, tcga_target)(batch)
    assert ok.tolist() == [True] * 3 + [False] * len(background)
    assert torch.equal(out[3:], batch[3:])
    assert not torch.equal(out[:3], batch[:3])
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_cielab_agrees_with_opencv_and_goes_back():
    colours = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4096, 3), np.uint8))
    lab = rgb_to_lab(colours)
    expected = cv2.cvtColor(colours.numpy()[None].astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[0]
    np.testing.assert_allclose(lab.numpy(), expected, atol=0.5)
    torch.testing.assert_close(lab_to_rgb(lab), colours.float(), atol=0.01, rtol=0)


# --- extraction -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_coords(cmu_tiles, stained, tmp_path_factory):
    """A coords file of six tissue patches and the background ones of the real slide, and how
    many of those there are."""
    slide, path, _ = cmu_tiles
    enough = stained[2]
    coords, attrs = read_coords(path)
    with h5py.File(path) as h5:
        fractions = h5["tissue_fraction"][:]
    rows = np.sort(np.r_[np.flatnonzero(enough)[:6], np.flatnonzero(~enough)])
    out = tmp_path_factory.mktemp("stain_small") / "coords.h5"
    write_coords(out, coords[rows], fractions[rows], attrs)
    return slide, out, int((~enough).sum())


def _features(path):
    with h5py.File(path) as h5:
        return h5["features"][:], dict(h5["features"].attrs)


@pytest.mark.slow
def test_extraction_writes_its_own_feature_set_and_off_changes_nothing(
    small_coords, lite0, tmp_path
):
    slide, coords, n_background = small_coords
    extract_slide(slide, coords, lite0, tmp_path / "plain.h5")
    off = create_normaliser("none")
    extract_slide(slide, coords, lite0, tmp_path / "off.h5", normaliser=off)
    normaliser = create_normaliser("macenko")
    extract_slide(slide, coords, lite0, tmp_path / "on.h5", normaliser=normaliser)
    plain, plain_attrs = _features(tmp_path / "plain.h5")
    same, same_attrs = _features(tmp_path / "off.h5")
    assert np.array_equal(plain, same) and same_attrs == plain_attrs
    assert not any(key.startswith("stain") for key in plain_attrs)
    normalised, attrs = _features(tmp_path / "on.h5")
    assert attrs["encoder"] == "efficientnet_lite0-macenko"
    assert attrs["stain_norm"] == "macenko" and attrs["stain_target"] == "built-in"
    assert attrs["stain_unnormalised"] == n_background
    changed = ~np.isclose(normalised, plain, atol=1e-4).all(axis=1)
    assert changed.sum() == len(plain) - n_background


def test_batch_recipes_of_plain_features_are_unchanged_and_name_the_stain_target(
    cmu_tiles, tcga_target, lite0, tmp_path
):
    slide, coords, _ = cmu_tiles
    item = BatchSlide("cmu", slide, coords, tmp_path / "cmu.h5", {})
    options = ExtractionOptions()
    plain = slide_recipe(item, lite0, options)
    assert slide_recipe(item, lite0, options, create_normaliser("none")) == plain
    assert "stain" not in plain  # staged plain features of earlier runs stay reusable
    target = tmp_path / "target.png"
    target.write_bytes(tcga_target.read_bytes())
    before = slide_recipe(item, lite0, options, MacenkoNormaliser(target))
    assert before["stain"]["method"] == "macenko" and before["stain"]["target_sha256"]
    image = cv2.imread(str(target))
    cv2.imwrite(str(target), image[::-1])  # same stains, other bytes: a new reference file
    assert slide_recipe(item, lite0, options, MacenkoNormaliser(target)) != before


# --- the workflow ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_dry_run_plans_both_feature_sets_through_every_stage(tcga_target, tmp_path):
    """Batches of slides, a reference image: the normalised set runs its own jobs from
    extraction to the summary, and only its jobs take the image as an input."""
    from tests.helpers import job_counts, snakemake, workflow_copy

    project = workflow_copy(tmp_path / "project")
    features = {
        "stain_norm": ["none", "macenko"],
        "stain_target": str(tcga_target),
        "slides_per_job": 2,
    }
    code, output = snakemake(project, "-n", config={"features": features})
    assert code == 0, output
    counts = job_counts(output)
    sets = 2
    assert counts["extract_feature_batch"] == sets * 2  # 4 demo slides, 2 per job
    assert counts["extract_features"] == sets * 4
    assert counts["train_model"] == sets * 2 * 2  # 2 model runs x 2 folds per set
    jobs = output.split("\n\n")
    batch_jobs = [job for job in jobs if "rule extract_feature_batch:" in job]
    normalised = [job for job in batch_jobs if "efficientnet_lite0-macenko/batches" in job]
    assert len(normalised) == 2
    assert all(str(tcga_target) in job for job in normalised)
    assert not any(str(tcga_target) in job for job in batch_jobs if job not in normalised)
