"""Families as objects, the one list of a block's layers, the one resolver, the one progress bar."""
import dataclasses
import random

import pytest

import effscale
from effscale import Coefficients, EffscaleError, StageSpec, family_of
from effscale.cost import cost
from effscale.families import family_for_text
from effscale.progress import ProgressBar
from effscale.series import SERIES, SERIES_B0
from effscale.zoo import resolve_image_spec, spec_from_text
from test_cost import random_spec


def test_every_spec_finds_its_family_and_nothing_else_does():
    b0 = effscale.get_spec("efficientnet_b0")
    assert family_of(b0) is effscale.IMAGE and family_of(SERIES_B0) is SERIES is effscale.SERIES
    assert {"image", "series"} <= {f.kind for f in effscale.families()}
    with pytest.raises(TypeError, match=r"expected a spec of a registered family \(image \(NetworkSpec\), "
                                        r"series \(SeriesSpec\).*got str"):
        family_of("efficientnet_b0")
    # the text form picks the family by its first word, and the family's parser reads it back
    assert family_for_text(SERIES_B0.to_text()) is SERIES and spec_from_text(b0.to_text()) == b0
    with pytest.raises(EffscaleError, match="must start with 'network NAME ...' or 'series NAME ...'"):
        spec_from_text("resnet 50")


def test_a_family_scales_builds_and_counts_its_specs():
    image = family_of(effscale.get_spec("efficientnet_b0"))
    small = image.scale(effscale.get_spec("efficientnet_b0"), Coefficients(width=0.5, depth=0.5), name="half")
    model = image.build(small, 10, 1)
    assert small.name == "half" and model.num_classes == 10 and model.in_chans == 1
    assert image.cost(small, num_classes=10, in_chans=1).params == sum(p.numel() for p in model.parameters())
    series = SERIES.scale(SERIES_B0, Coefficients(resolution=2.0))
    assert series.resolution == 2 * SERIES_B0.resolution
    assert SERIES.cost(series).params == sum(p.numel() for p in SERIES.build(series).parameters())
    # compound and scale, the public ones, go through the family: no method on the spec is involved
    assert not hasattr(SERIES_B0, "scaled") and not hasattr(small, "build")
    assert effscale.compound(SERIES_B0, 1).resolution == SERIES.scale(SERIES_B0, effscale.ScalingRule().at(1)).resolution


@dataclasses.dataclass(frozen=True)
class TaggedStage(StageSpec):
    """A stage row with a field the scaling code has never heard of."""

    tag: str = "keep-me"


def test_scaling_carries_every_stage_field_over():
    base = effscale.get_spec("efficientnet_b0")
    tagged = base.replace(stages=tuple(TaggedStage(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
                                                   tag=f"t{i}") for i, s in enumerate(base.stages)))
    scaled = effscale.scale(tagged, Coefficients(depth=1.4, width=1.2))
    assert [s.tag for s in scaled.stages] == [f"t{i}" for i in range(len(base.stages))]
    assert all(type(s) is TaggedStage for s in scaled.stages)
    assert [s.repeats for s in scaled.stages] == [s.repeats for s in effscale.scale(base, Coefficients(depth=1.4,
                                                                                                   width=1.2)).stages]


@pytest.mark.parametrize("seed", range(4))
def test_modules_cost_and_weight_keys_all_walk_the_blocks_layers(seed):
    spec = random_spec(random.Random(seed), seed)
    model = effscale.create_model(spec, num_classes=3)
    rows = {row.name for row in cost(model).layers}
    keys = set(model.state_dict())
    for block in spec.blocks():
        module = model.stages[block.stage][block.position]
        names = [layer.name for layer in block.layers()]
        assert [n for n, _ in module.named_children() if n != "drop_path"] == names
        for layer in block.layers():
            prefix = f"stages.{block.stage}.{block.position}.{layer.name}"
            if layer.kind == "se":
                assert {f"{prefix}.reduce", f"{prefix}.expand"} <= rows
            else:
                assert f"{prefix}.conv" in rows
                conv = getattr(module, layer.name).conv
                assert (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.groups) == \
                       (layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups)
                assert hasattr(getattr(module, layer.name), "act") == layer.activation
            assert {f"{prefix}.{part}.weight" for part in layer.parameter_modules()} <= keys


def test_the_image_resolver_names_another_familys_model():
    with pytest.raises(EffscaleError, match="'series_b0' is a series model; this takes image models"):
        resolve_image_spec("series_b0")
    with pytest.raises(EffscaleError, match="'series_b0' is a series model"):
        effscale.create_model("series_b0")
    assert resolve_image_spec("efficientnet_b0", resolution=256).resolution == 256
    with pytest.raises(TypeError, match="got int 3"):
        resolve_image_spec(3)


def test_a_disabled_progress_bar_still_prints_its_messages_to_stderr(capsys):
    with ProgressBar(False) as bar:
        task = bar.task("work", total=3)
        task.advance()
        task.update(3, info="done")
        bar.print("effscale: a message")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "effscale: a message\n"


def test_specs_and_scaling_import_nothing_that_builds_or_counts_them():
    # The bottom of the house: what a spec is and how it scales never reaches up to torch, the
    # modules, the cost or the families' registrations (read from the source, imports anywhere).
    import ast
    from pathlib import Path

    root = Path(effscale.__file__).parent
    for name in ("spec.py", "families.py", "scaling.py"):
        tree = ast.parse((root / name).read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        ours = {module.lstrip(".") for module in imported if module.startswith((".", "effscale"))}
        assert ours <= {"errors", "spec", "families", "__future__"}, (name, ours)
        assert not any(module.split(".")[0] in ("torch", "numpy") for module in imported), (name, imported)
