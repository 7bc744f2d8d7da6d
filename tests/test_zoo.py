"""The standard layouts in `easc.backends.torch.zoo` are the real architectures: same parameter counts as the
reference implementations at full width, and they run at the small sizes the tests use."""

import pytest
import torch

from easc.backends.torch import zoo

# Parameter counts at width 1.0 and 1000 classes, as the reference implementations (torchvision) report them;
# AlexNet and VGG at 224x224, where their classifiers see 6x6 and 7x7 maps. GoogLeNet with the 3x3 third
# branch that torchvision's copy has (the paper's 5x5 is easc's default).
REFERENCE_PARAMS = {
    "resnet18": 11_689_512, "resnet50": 25_557_032, "resnext50": 25_028_904, "densenet121": 7_978_856,
    "vgg11_bn": 132_868_840, "alexnet": 61_100_840, "squeezenet1_0": 1_248_424, "squeezenet1_1": 1_235_496,
    "googlenet": 6_624_904, "mnasnet": 4_383_312, "regnetx": 5_495_976, "mobilenet_v2": 3_504_872,
    "mobilenet_v3": 5_483_032, "efficientnet_b0": 5_288_548, "regnety": 4_344_144, "shufflenet_v2": 2_278_604,
}
FULL_SIZE_OPTIONS = {"vgg11_bn": {"input_size": 224}, "alexnet": {"input_size": 224}, "googlenet": {"kernel5": 3}}


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
def test_layout_has_the_reference_parameter_count_at_full_width(name):
    with torch.device("meta"):  # counts shapes without allocating 100M+ parameters
        model = zoo.ARCHITECTURES[name](num_classes=1000, **FULL_SIZE_OPTIONS.get(name, {}))
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
def test_reduced_width_layout_runs_at_its_smallest_input(name):
    size = zoo.MIN_INPUT.get(name, 32)
    options = {"input_size": size} if name in ("vgg11_bn", "alexnet") else {}
    model = zoo.ARCHITECTURES[name](num_classes=10, width_mult=0.25, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_alexnet_refuses_an_input_too_small_for_its_stem_and_pools():
    with pytest.raises(ValueError, match="at least 63x63"):
        zoo.alexnet(input_size=32)


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert zoo.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
