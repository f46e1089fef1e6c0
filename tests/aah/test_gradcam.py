"""Batched attribute Grad-CAM (AAH, eqs. 1-2) against the grad-cam package and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import Tensor, nn

from sangal.aah.gradcam import (
    attribute_heatmaps,
    attribute_heatmaps_from_output,
    default_chunk,
    normalize_heatmaps,
    target_classes,
)
from sangal.data.attributes import IGNORE_INDEX
from sangal.models.attribute_net import AttributeNet

MARKET_CLASSES = [2] * 9 + [4] + [2] * 17  # K = 27
B, H, W = 3, 64, 32  # stage maps 8x4, 4x2, 4x2 with resnet18, last stride 1
# Attributes compared with the grad-cam package (each comparison costs one package
# forward+backward): one with an IGNORE_INDEX label, the 4-class age, the last colour.
PACKAGE_ATTRS = (3, 9, 26)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_net(seed: int = 0, backbone: str = "resnet18") -> AttributeNet:
    """Attribute net (resnet18 by default) whose heads are far from uniform (so predictions vary)."""
    torch.manual_seed(seed)
    net = AttributeNet(MARKET_CLASSES, backbone=backbone, pretrained=False)
    for head in net.heads:
        nn.init.normal_(head.fc.weight, std=0.05)
        nn.init.normal_(head.fc.bias, std=0.5)
        head.bn.running_mean.normal_(0.0, 0.1)
        head.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> AttributeNet:
    return _make_net()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def labels(net: AttributeNet, images: Tensor) -> Tensor:
    """Ground-truth-like labels: random classes, a few IGNORE_INDEX entries."""
    g = torch.Generator().manual_seed(2)
    t = torch.stack([torch.randint(0, c, (B,), generator=g) for c in MARKET_CLASSES], dim=1)
    t[0, 3] = IGNORE_INDEX
    t[2, 9] = IGNORE_INDEX
    return t


@pytest.fixture(scope="module")
def guided_raw(net: AttributeNet, images: Tensor, labels: Tensor):
    """Raw (un-normalised) label-guided maps, computed once for the module."""
    return attribute_heatmaps(net, images, labels, normalize="none")


@pytest.fixture(scope="module")
def free_raw(net: AttributeNet, images: Tensor):
    """Raw maps of the predicted classes (test-time mode)."""
    return attribute_heatmaps(net, images, None, normalize="none")


def _assert_maps_close(got: Tensor, ref: Tensor, rel: float = 1e-4) -> None:
    """Close up to ``rel`` relative to the largest value of ``ref`` (raw maps are ~1e-3..1e-1)."""
    torch.testing.assert_close(got, ref, rtol=rel, atol=rel * max(float(ref.abs().max()), 1e-30))


# ------------------------------------------------------ reference: grad-cam package
class _HeadLogits(nn.Module):
    """The attribute net seen as a single classifier: head k's logits (B, C_k)."""

    def __init__(self, net: AttributeNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).logits[self.k]


class _LayerResolutionGradCAM(GradCAM):
    """pytorch_grad_cam.GradCAM without its two post-processing steps that we do not do.

    The package computes, per target layer, ``scale_cam_image(relu(cam), input size)``
    (min-max scale then cv2.resize to the image size) and then aggregates layers
    with a second ``scale_cam_image``. Returning ``None`` as target size skips the
    resize, and the identity aggregation returns the single layer's map, so the
    result is the package's own ReLU'd, min-max-scaled map at layer resolution:
    the exact quantity our ``normalize="minmax"`` maps are meant to equal.
    """

    def get_target_width_height(self, input_tensor: Tensor) -> None:  # type: ignore[override]
        return None

    def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
        return cam_per_target_layer[0][:, 0]


def _package_maps(net: AttributeNet, images: Tensor, k: int, stage: int, classes: Tensor):
    """(raw ReLU map, min-max-scaled map), each (B, h, w), from the grad-cam package."""
    layer = [net.backbone.layer2, net.backbone.layer3, net.backbone.layer4][stage]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[:, k]]
    with _LayerResolutionGradCAM(_HeadLogits(net, k), [layer]) as cam:
        scaled = cam(images, targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(images, layer, targets, acts, grads), 0)
    return raw, scaled


def test_matches_grad_cam_package(net: AttributeNet, images: Tensor, labels: Tensor, guided_raw) -> None:
    """Same model, layer and target class: our maps equal the package's, raw and scaled."""
    ours_mm = [normalize_heatmaps(m, "minmax") for m in guided_raw]  # plumbing: test_max_normalisation
    classes = target_classes(net(images).logits, labels)
    assert bool((guided_raw[2] > 0).any())
    for stage in range(3):
        for k in PACKAGE_ATTRS:
            raw, scaled = _package_maps(net, images, k, stage, classes)
            got = guided_raw[stage][:, k].numpy()
            assert got.shape == raw.shape
            tol = 1e-4 * max(float(np.abs(raw).max()), 1e-12)
            np.testing.assert_allclose(got, raw, rtol=1e-4, atol=tol, err_msg=f"stage {stage} k {k}")
            np.testing.assert_allclose(ours_mm[stage][:, k].numpy(), scaled, rtol=1e-4, atol=1e-5)
    net.zero_grad(set_to_none=True)  # the package's backward() filled the parameter grads


def test_mobilenet_v2_stages_match_grad_cam_package(images: Tensor, labels: Tensor) -> None:
    """The same check on MobileNetV2, whose layer2/3/4 are views of its ``features`` (stride 8, 16, 32->16)."""
    net = _make_net(backbone="mobilenet_v2")
    raw = attribute_heatmaps(net, images, labels, normalize="none")
    assert [tuple(m.shape) for m in raw] == [(B, 27, 8, 4), (B, 27, 4, 2), (B, 27, 4, 2)]
    classes = target_classes(net(images).logits, labels)
    for stage in range(3):
        assert bool((raw[stage] > 0).any()), stage
        for k in PACKAGE_ATTRS:
            package_raw, _ = _package_maps(net, images, k, stage, classes)
            tol = 1e-4 * max(float(np.abs(package_raw).max()), 1e-30)
            np.testing.assert_allclose(raw[stage][:, k].numpy(), package_raw, rtol=1e-4, atol=tol,
                                       err_msg=f"stage {stage} k {k}")


def test_minmax_is_the_packages_scale_cam_image() -> None:
    maps = torch.rand(2, 3, 5, 4) * torch.tensor([0.0, 1.0, 1e-3]).view(1, 3, 1, 1)
    ref = scale_cam_image(maps.reshape(6, 5, 4).numpy())
    got = normalize_heatmaps(maps, "minmax").reshape(6, 5, 4).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_batch_maps_equal_per_sample_maps(net: AttributeNet, images: Tensor, labels: Tensor, guided_raw) -> None:
    """Eval mode: summing the cotangent over the batch does not mix samples."""
    for b in (1,):
        single = attribute_heatmaps(net, images[b : b + 1], labels[b : b + 1], normalize="none")
        for s in range(3):
            _assert_maps_close(single[s], guided_raw[s][b : b + 1])


def test_layer4_map_by_hand(net: AttributeNet, images: Tensor, free_raw) -> None:
    """At layer4, dy/dA_ij = (dy/df) / (h w) for every position (GAP), so w_c = (dy/df)_c / (h w)
    with dy/df = J_softmax^T W_fc diag(gamma / sigma) (eval-mode BN)."""
    with torch.no_grad():
        a4 = net.forward_stages(images)[2]  # (B, C, h, w)
        f = a4.mean(dim=(2, 3))  # (B, C)
        hw = a4.shape[2] * a4.shape[3]
        for k, head in enumerate(net.heads):
            z = head(f)  # (B, C_k)
            p = torch.softmax(z, dim=1)
            c = z.argmax(dim=1)
            dy_dz = p.gather(1, c[:, None]) * (F.one_hot(c, p.shape[1]).float() - p)  # (B, C_k)
            scale = head.bn.weight / torch.sqrt(head.bn.running_var + head.bn.eps)  # (C,)
            weights = (dy_dz @ head.fc.weight) * scale / hw  # (B, C)
            ref = torch.relu(torch.einsum("bc,bchw->bhw", weights, a4))
            _assert_maps_close(free_raw[2][:, k], ref)


def test_labels_vs_predictions_differ_exactly_where_prediction_is_wrong(
    net: AttributeNet, images: Tensor, labels: Tensor, guided_raw, free_raw
) -> None:
    predicted = target_classes(net(images).logits)
    resolved = torch.where(labels == IGNORE_INDEX, predicted, labels)
    wrong = resolved != predicted  # (B, K)
    assert 0 < int(wrong.sum()) < wrong.numel()
    for s in range(3):
        for b in range(B):
            for k in range(len(MARKET_CLASSES)):
                g, f = guided_raw[s][b, k], free_raw[s][b, k]
                if wrong[b, k]:
                    assert not torch.allclose(g, f, rtol=1e-3, atol=1e-9), (s, b, k)
                    if MARKET_CLASSES[k] == 2:
                        # binary head: dp_1/dz = -dp_0/dz, so the two maps are
                        # ReLU(m) and ReLU(-m): disjoint supports.
                        assert float((g * f).abs().max()) == 0.0
                else:
                    _assert_maps_close(g, f, rel=1e-5)


def test_ignore_index_everywhere_equals_predictions(net: AttributeNet, images: Tensor, free_raw) -> None:
    ignored = torch.full((B, len(MARKET_CLASSES)), IGNORE_INDEX, dtype=torch.long)
    for a, b in zip(attribute_heatmaps(net, images, ignored, normalize="none"), free_raw):
        _assert_maps_close(a, b)


def test_max_normalisation(net: AttributeNet, images: Tensor, free_raw) -> None:
    normed = attribute_heatmaps(net, images, normalize="max")
    for r, n in zip(free_raw, normed):
        assert r.dtype == n.dtype == torch.float32
        assert bool((r >= 0).all()) and not bool(torch.isnan(n).any())
        peak = r.amax(dim=(2, 3))  # (B, K)
        npeak = n.amax(dim=(2, 3))
        assert bool((peak > 0).any())
        torch.testing.assert_close(npeak[peak > 0], torch.ones_like(npeak[peak > 0]))
        assert bool((n[peak == 0] == 0).all())
        torch.testing.assert_close(n * peak[..., None, None], r, rtol=1e-5, atol=1e-9)
    # an all-zero map stays zero (no NaN) and a tiny map still peaks at 1
    maps = torch.stack([torch.zeros(4, 3), torch.rand(4, 3) * 1e-30])[None]  # (1, 2, 4, 3)
    for mode in ("max", "minmax"):
        out = normalize_heatmaps(maps, mode)
        assert not bool(torch.isnan(out).any())
        assert bool((out[0, 0] == 0).all())
    assert float(normalize_heatmaps(maps, "max")[0, 1].max()) == pytest.approx(1.0)
    assert normalize_heatmaps(maps, "none") is maps
    with pytest.raises(ValueError, match="normalize"):
        attribute_heatmaps(net, images, normalize="sum")


def test_shapes_detached_and_no_parameter_grads(net: AttributeNet, images: Tensor) -> None:
    net.zero_grad(set_to_none=True)
    maps = attribute_heatmaps(net, images)
    assert [tuple(m.shape) for m in maps] == [(B, 27, 8, 4), (B, 27, 4, 2), (B, 27, 4, 2)]
    assert not any(m.requires_grad for m in maps)
    assert all(p.grad is None for p in net.parameters())


def _convs(*modules: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for mod in modules for m in mod.modules())


def test_one_vectorised_backward(net: AttributeNet, images: Tensor, free_raw, monkeypatch) -> None:
    """Every convolution of layer3/layer4 runs its backward once, on K*B samples."""
    calls: list[int] = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    def no_backward(*args, **kwargs):
        raise AssertionError("the engine must not call backward()")

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    k = len(MARKET_CLASSES)
    with torch.profiler.profile(record_shapes=True) as prof:
        maps = attribute_heatmaps(net, images, normalize="none", chunk=k)
    # one vjp per stage segment (heads->layer4, layer4->layer3, layer3->layer2), one vmap
    assert len(calls) == 3
    conv_bw = [e for e in prof.events() if e.name == "aten::convolution_backward"]
    n_convs = _convs(net.backbone.layer3, net.backbone.layer4)
    batched = [e for e in conv_bw if e.input_shapes and e.input_shapes[0][:1] == [k * B]]
    assert len(batched) == n_convs  # each conv once, all K attributes at a time
    assert len(conv_bw) <= 2 * n_convs  # (+ the vmap front-end event), not K times
    # free_raw was computed with the default chunking: same maps
    for a, b in zip(maps, free_raw):
        _assert_maps_close(a, b)

    calls.clear()
    chunked = attribute_heatmaps(net, images, normalize="none", chunk=14)
    assert len(calls) == 3 * 2  # ceil(27 / 14) chunks
    for a, b in zip(chunked, free_raw):
        _assert_maps_close(a, b)

    calls.clear()
    attribute_heatmaps(net, images)
    assert len(calls) == 3 * math.ceil(k / default_chunk(B, k, "cpu", H * W))


def test_one_attribute_at_a_time_is_a_plain_call_through_the_folded_net(net: AttributeNet, images: Tensor,
                                                                       monkeypatch) -> None:
    """A chunk of one runs no vmap and folds the net's BatchNorms (sangal.models.folding); larger chunks do
    neither; all give the maps of one vectorised backward, up to float rounding."""
    import sangal.aah.gradcam as gradcam

    vectorised = attribute_heatmaps(net, images, normalize="none", chunk=len(MARKET_CLASSES))
    folded, fold = [], gradcam.fold_batchnorm
    monkeypatch.setattr(gradcam, "fold_batchnorm", lambda module, probe: folded.append(1) or fold(module, probe))
    monkeypatch.setattr(gradcam, "vmap", lambda fn: pytest.fail("vmap used for one attribute at a time"))
    for a, b in zip(attribute_heatmaps(net, images, normalize="none", chunk=1), vectorised):
        _assert_maps_close(a, b)
    assert folded == [1]
    with pytest.raises(pytest.fail.Exception, match="vmap used"):
        attribute_heatmaps(net, images, normalize="none", chunk=2)
    assert folded == [1]


def test_default_chunk() -> None:
    # CPU: about 24 images of 64x32 per vectorised backward; from 128x64 at batch 8 up one attribute at a time
    assert default_chunk(8, 27, "cpu", 64 * 32) == 3
    assert default_chunk(1, 27, "cpu", 64 * 32) == 24
    assert default_chunk(8, 27, "cpu", 128 * 64) == 1
    assert default_chunk(32, 27, "cpu", 128 * 64) == 1
    assert default_chunk(1, 5, "cpu", 16 * 8) == 5
    assert default_chunk(8, 27, "cuda", 128 * 64) == 27  # accelerators: all attributes at once


def test_works_inside_no_grad(net: AttributeNet, images: Tensor, free_raw) -> None:
    with torch.no_grad():
        inside = attribute_heatmaps(net, images, normalize="none")
    for a, b in zip(free_raw, inside):
        _assert_maps_close(a, b)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attribute_heatmaps(net, images)


def test_create_graph_keeps_maps_differentiable(images: Tensor) -> None:
    torch.manual_seed(4)
    small = AttributeNet([2, 4, 2], backbone="resnet18", pretrained=False).eval()
    ref = attribute_heatmaps(small, images, normalize="none")
    diff = attribute_heatmaps(small, images, normalize="none", create_graph=True)
    assert all(m.requires_grad for m in diff) and not any(m.requires_grad for m in ref)
    for a, c in zip(ref, diff):
        _assert_maps_close(c.detach(), a)
    diff[2].sum().backward()  # second order: the maps depend on the head weights
    assert float(small.heads[0].fc.weight.grad.abs().sum()) > 0


def test_target_validation(net: AttributeNet, images: Tensor, labels: Tensor) -> None:
    bad = labels.clone()
    bad[1, 9] = 4  # age has 4 classes: 0..3
    with pytest.raises(ValueError, match="attribute 9"):
        attribute_heatmaps(net, images, bad)
    with pytest.raises(ValueError, match="shape"):
        attribute_heatmaps(net, images, labels[:, :5])
    with pytest.raises(ValueError, match="integer"):
        attribute_heatmaps(net, images, labels.float())
    with pytest.raises(ValueError, match="chunk"):
        attribute_heatmaps(net, images, chunk=0)


def _attr_loss(logits: list[Tensor], labels: Tensor) -> Tensor:
    return sum(F.cross_entropy(z, labels[:, k], ignore_index=IGNORE_INDEX) for k, z in enumerate(logits))


def test_online_mode_reuses_forward_and_leaves_the_attribute_loss_gradients_intact(
    images: Tensor, monkeypatch
) -> None:
    """Dual-trace training: Grad-CAM backward first, then the attribute-loss backward."""
    classes = [2, 4, 2]  # the mechanics do not depend on K; keep the train-mode backward small
    labels = torch.tensor([[0, 3, IGNORE_INDEX], [1, 0, 1], [1, 2, 0]])

    def make() -> AttributeNet:
        torch.manual_seed(3)
        return AttributeNet(classes, backbone="resnet18", pretrained=False).train()

    net, ref_net = make(), make()
    calls: list[int] = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    out = net(images)
    maps = attribute_heatmaps_from_output(out, labels)
    assert len(calls) == -(-3 // default_chunk(B, 3, "cpu", H * W))  # graph path: one grad(is_grads_batched) a chunk
    assert [tuple(m.shape) for m in maps] == [(B, 3, 8, 4), (B, 3, 4, 2), (B, 3, 4, 2)]
    assert not any(m.requires_grad for m in maps)
    assert all(p.grad is None for p in net.parameters())  # Grad-CAM grads are discarded
    _attr_loss(out.logits, labels).backward()  # second backward pass on the retained graph
    _attr_loss(ref_net(images).logits, labels).backward()
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)

    # attribute_heatmaps on a train-mode net (graph path) gives the same maps
    again = attribute_heatmaps(net, images, labels)
    for a, b in zip(maps, again):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    out = net(images)
    attribute_heatmaps_from_output(out, labels, retain_graph=False)
    with pytest.raises(RuntimeError):
        _attr_loss(out.logits, labels).backward()
    with torch.no_grad():
        frozen = net(images)
    with pytest.raises(ValueError, match="require grad"):
        attribute_heatmaps_from_output(frozen)


def test_from_output_equals_from_images_in_eval_mode(
    net: AttributeNet, images: Tensor, labels: Tensor, guided_raw
) -> None:
    """The graph path and the functional path agree."""
    got = attribute_heatmaps_from_output(net(images), labels, normalize="none", retain_graph=False)
    for a, b in zip(got, guided_raw):
        _assert_maps_close(a, b)


def test_bf16_autocast_close_to_fp32(net: AttributeNet, images: Tensor, labels: Tensor, guided_raw) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attribute_heatmaps(net, images, labels)
    for rw, lo in zip(guided_raw, low):
        r = normalize_heatmaps(rw, "max")
        assert lo.dtype == torch.float32 and not bool(torch.isnan(lo).any())
        assert float((lo - r).abs().mean()) < 0.03
        # Maps that are not degenerate (raw peak >= 10 % of the stage's median peak;
        # max-normalisation blows a nearly-all-negative map's last positive pixel up
        # to 1, where bf16 rounding may flip its sign) point at the same places.
        peak = rw.amax(dim=(2, 3))  # (B, K)
        solid = peak >= 0.1 * peak.median()
        assert float(solid.float().mean()) > 0.5
        cos = F.cosine_similarity(lo.flatten(2), r.flatten(2), dim=2)  # (B, K)
        assert float(cos[solid].median()) > 0.99
        assert float(cos[solid].min()) > 0.85
        assert float((lo - r).abs().amax(dim=(2, 3))[solid].max()) < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(images: Tensor, labels: Tensor, guided_raw) -> None:
    gpu_net = _make_net().cuda()
    gpu = attribute_heatmaps(gpu_net, images.cuda(), labels.cuda(), normalize="none")
    for r, g in zip(guided_raw, gpu):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), r, rtol=1e-3, atol=1e-3 * float(r.max()))
    online = attribute_heatmaps_from_output(gpu_net(images.cuda()), labels.cuda(), normalize="none")
    for a, b in zip(online, gpu):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.max()))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = attribute_heatmaps(gpu_net, images.cuda(), labels.cuda())
    assert all(m.dtype == torch.float32 and m.is_cuda and not m.isnan().any() for m in low)
