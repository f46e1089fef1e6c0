"""Losses: label smoothing, hand-computed batch-hard triplet, attribute CE with IGNORE_INDEX, DeepMAR weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sangal.models.reid_net import ReIDOutput
from sangal.train.losses import (
    ATTR_LOSSES,
    IGNORE_INDEX,
    attribute_ce,
    attribute_class_weights,
    balanced_class_weights,
    class_ratios,
    batch_hard_triplet,
    cross_entropy_ls,
    reid_losses,
)


def test_ignore_index_matches_data_schema():
    attributes = pytest.importorskip("sangal.data.attributes")
    assert IGNORE_INDEX == attributes.IGNORE_INDEX


def test_plain_ce_and_label_smoothing_match_torch():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    torch.testing.assert_close(cross_entropy_ls(logits, target, 0.0), F.cross_entropy(logits, target))
    for eps in (0.1, 0.3):
        torch.testing.assert_close(
            cross_entropy_ls(logits, target, eps), F.cross_entropy(logits, target, label_smoothing=eps)
        )
    assert not torch.allclose(cross_entropy_ls(logits, target, 0.1), cross_entropy_ls(logits, target, 0.0))
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_ls(logits, target, 1.0)


def test_batch_hard_triplet_hand_computed():
    # 1-D points: ids A at 0 and 1, ids B at 3 and 6.
    features = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1, neg min(3, 6) = 3 -> max(0, 1 - 3 + m)
    # anchor 1: pos 1, neg 2               -> max(0, 1 - 2 + m)
    # anchor 3: pos 3, neg 2 (to 1.0)      -> max(0, 3 - 2 + m)
    # anchor 6: pos 3, neg 5               -> max(0, 3 - 5 + m)
    m = 0.3
    expected = (max(0, -2 + m) + max(0, -1 + m) + max(0, 1 + m) + max(0, -2 + m)) / 4
    loss = batch_hard_triplet(features, pids, margin=m)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    m = 1.5
    expected = (0 + 0.5 + 2.5 + 0) / 4
    assert batch_hard_triplet(features, pids, margin=m).item() == pytest.approx(expected, abs=1e-5)
    soft = (
        math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log1p(math.exp(-2))
    ) / 4
    assert batch_hard_triplet(features, pids, margin=None).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_skips_anchors_without_positive_and_has_gradient():
    features = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0]], requires_grad=True)
    pids = torch.tensor([0, 0, 1])  # anchor 2 has no positive -> skipped
    # anchors 0 and 1: pos 1, neg 5 and sqrt(26) -> both 0 with margin 0.3; use margin 5
    loss = batch_hard_triplet(features, pids, margin=5.0)
    expected = ((1 - 5 + 5) + (1 - math.sqrt(26) + 5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    single_id = batch_hard_triplet(torch.randn(3, 4), torch.tensor([1, 1, 1]))
    assert single_id.item() == 0.0


def test_attribute_ce_ignores_unlabelled():
    torch.manual_seed(1)
    head0 = torch.randn(4, 2)
    head1 = torch.randn(4, 3)
    targets = torch.tensor([[0, 2], [1, IGNORE_INDEX], [IGNORE_INDEX, 0], [1, 1]])
    expected0 = F.cross_entropy(head0[[0, 1, 3]], targets[[0, 1, 3], 0])
    expected1 = F.cross_entropy(head1[[0, 2, 3]], targets[[0, 2, 3], 1])
    loss = attribute_ce([head0, head1], targets)
    torch.testing.assert_close(loss, (expected0 + expected1) / 2)


def test_attribute_ce_all_ignored_head_is_zero_not_nan():
    head0 = torch.randn(3, 2, requires_grad=True)
    head1 = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[1, IGNORE_INDEX], [0, IGNORE_INDEX], [1, IGNORE_INDEX]])
    loss = attribute_ce([head0, head1], targets)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(head0, targets[:, 0]) / 2)
    loss.backward()
    assert torch.isfinite(head1.grad).all() and head1.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="2 heads but targets of shape"):
        attribute_ce([head0, head1], targets[:, :1])


def test_class_ratios_skip_unlabelled_entries():
    targets = torch.tensor([[1, 0], [0, 2], [0, IGNORE_INDEX], [0, 2], [IGNORE_INDEX, IGNORE_INDEX]])
    ratios = class_ratios(targets, [2, 3])
    assert ratios[0].tolist() == [0.75, 0.25]
    assert ratios[1].tolist() == [pytest.approx(1 / 3), 0.0, pytest.approx(2 / 3)]
    assert class_ratios(torch.full((3, 1), IGNORE_INDEX), [4])[0].tolist() == [0.25] * 4  # labelled nowhere
    with pytest.raises(ValueError, match="attribute 0 has label 2 but 2 classes"):
        class_ratios(torch.tensor([[2]]), [2])


def test_deepmar_weights_for_a_known_ratio():
    """Positive ratio p = 0.1: positives weigh exp(0.9), negatives exp(0.1) (Li et al. 2015, sigma = 1)."""
    (binary, three) = balanced_class_weights([torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.3, 0.2])])
    torch.testing.assert_close(binary, torch.tensor([math.exp(0.1), math.exp(0.9)]))
    torch.testing.assert_close(three, torch.tensor([math.exp(0.5), math.exp(0.7), math.exp(0.8)]))
    targets = torch.tensor([[1]] + [[0]] * 9)
    weights, record = attribute_class_weights("balanced", targets, [2])
    torch.testing.assert_close(weights[0], binary)
    assert record["loss"] == "balanced" and record["class_ratios"] == [[0.9, 0.1]]
    assert record["class_weights"][0] == pytest.approx([math.exp(0.1), math.exp(0.9)])
    assert attribute_class_weights("ce", targets, [2])[0] is None
    with pytest.raises(ValueError, match="unknown attribute loss 'focal'"):
        attribute_class_weights("focal", targets, [2])


def test_balanced_ce_is_plain_ce_when_classes_are_balanced():
    torch.manual_seed(3)
    logits = [torch.randn(6, 2), torch.randn(6, 3)]
    targets = torch.tensor([[0, 0], [1, 1], [0, 2], [1, IGNORE_INDEX], [IGNORE_INDEX, 1], [0, 2]])
    weights = balanced_class_weights([torch.tensor([0.5, 0.5]), torch.tensor([1 / 3] * 3)])
    torch.testing.assert_close(attribute_ce(logits, targets, weights), attribute_ce(logits, targets))


def test_balanced_ce_weighs_rare_classes_up_and_ignores_unlabelled():
    torch.manual_seed(4)
    logits = torch.randn(5, 2, requires_grad=True)
    targets = torch.tensor([[0], [1], [0], [IGNORE_INDEX], [0]])
    w = torch.tensor([math.exp(0.1), math.exp(0.9)])  # positives rare (p = 0.1)
    nll = -F.log_softmax(logits, dim=1)[torch.arange(5), targets[:, 0].clamp_min(0)]
    keep = torch.tensor([0, 1, 2, 4])
    expected = (w[targets[keep, 0]] * nll[keep]).sum() / w[targets[keep, 0]].sum()
    loss = attribute_ce([logits], targets, [w])
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, attribute_ce([logits], targets))
    loss.backward()
    assert logits.grad[3].abs().sum() == 0  # the unlabelled sample has no say
    grad_pos, grad_neg = logits.grad[1].abs().sum(), logits.grad[[0, 2, 4]].abs().sum(dim=1)
    plain = torch.autograd.grad(attribute_ce([logits], targets), logits)[0]
    assert grad_pos / grad_neg.mean() > plain[1].abs().sum() / plain[[0, 2, 4]].abs().sum(dim=1).mean()
    all_ignored = attribute_ce([logits], torch.full((5, 1), IGNORE_INDEX), [w])
    assert all_ignored == 0 and torch.isfinite(all_ignored)
    with pytest.raises(ValueError, match="1 heads but 2 class weight vectors"):
        attribute_ce([logits], targets, [w, w])


def test_config_choices_are_the_attribute_losses():
    from sangal.config import CHOICES, load_config

    assert CHOICES["attr_train.loss"] == ATTR_LOSSES
    assert load_config(None).attr_train.loss == "ce"  # the paper's plain cross-entropy stays the default


def _output(with_attrs: bool) -> ReIDOutput:
    torch.manual_seed(2)
    attr_logits = [torch.randn(4, 2), torch.randn(4, 3)] if with_attrs else None
    return ReIDOutput(
        features=torch.randn(4, 8),
        global_features=torch.randn(4, 8),
        logits=torch.randn(4, 5),
        attr_logits=attr_logits,
    )


def test_reid_losses_named_terms_sum_to_total():
    out = _output(with_attrs=True)
    pids = torch.tensor([0, 0, 3, 3])
    attrs = torch.tensor([[0, 1], [1, 2], [IGNORE_INDEX, 0], [1, 1]])
    weights = {"id": 1.0, "triplet": 2.0, "attr": 0.5}
    terms = reid_losses(out, pids, attrs, weights, epsilon=0.1, margin=0.3)
    assert set(terms) == {"id", "triplet", "attr", "total"}
    torch.testing.assert_close(terms["total"], terms["id"] + 2.0 * terms["triplet"] + 0.5 * terms["attr"])
    torch.testing.assert_close(terms["id"], cross_entropy_ls(out.logits, pids, 0.1))
    torch.testing.assert_close(terms["triplet"], batch_hard_triplet(out.global_features, pids, 0.3))
    torch.testing.assert_close(terms["attr"], attribute_ce(out.attr_logits, attrs))


def test_the_triplet_mines_over_the_batch_it_is_given():
    """Under DDP the triplet sees the global batch gathered from every rank, the other terms this rank's."""
    out = _output(with_attrs=False)
    pids = torch.tensor([0, 0, 3, 3])
    wider = torch.cat([out.global_features, torch.randn(4, 8)])
    wider_pids = torch.cat([pids, torch.tensor([0, 3, 5, 5])])
    terms = reid_losses(out, pids, None, {}, margin=0.3, triplet_features=wider, triplet_pids=wider_pids)
    torch.testing.assert_close(terms["triplet"], batch_hard_triplet(wider, wider_pids, 0.3))
    assert not torch.allclose(terms["triplet"], batch_hard_triplet(out.global_features, pids, 0.3))


def test_a_weight_of_zero_drops_the_term():
    terms = reid_losses(_output(with_attrs=False), torch.tensor([0, 0, 3, 3]), None, {"triplet": 0.0})
    assert set(terms) == {"id", "total"}
    torch.testing.assert_close(terms["total"], terms["id"])


def test_reid_losses_attr_only_when_available():
    pids = torch.tensor([0, 0, 3, 3])
    terms = reid_losses(_output(with_attrs=False), pids, None, {"id": 1.0, "triplet": 1.0, "attr": 1.0})
    assert set(terms) == {"id", "triplet", "total"}
    terms = reid_losses(_output(with_attrs=True), pids, None, {})
    assert "attr" not in terms
    with pytest.raises(ValueError, match="unknown loss weights \\['center'\\]"):
        reid_losses(_output(with_attrs=False), pids, None, {"center": 1.0})


def test_attention_guidance_is_zero_on_the_target_shape_and_pulls_toward_it():
    from sangal.train.losses import attention_guidance

    torch.manual_seed(0)
    maps = [torch.rand(2, 5, 8, 4), torch.rand(2, 5, 4, 2), torch.rand(2, 5, 4, 2)]
    target = [m.mean(dim=1) for m in maps]  # (B, h, w): the mean over attributes
    assert attention_guidance([3.0 * t for t in target], maps).item() < 1e-6  # scale-free: normalised per image
    attention = [torch.rand_like(t).requires_grad_() for t in target]
    loss = attention_guidance(attention, maps)
    assert loss.item() > 1e-3
    loss.backward()
    with torch.no_grad():  # one step down the gradient moves every stage's attention toward its target
        stepped = [a - 0.5 * a.grad for a in attention]
    assert attention_guidance(stepped, maps).item() < loss.item()
    # a stage whose maps come at another size is resized to the attention's
    coarse = [torch.full((2, 5, 2, 1), 0.7)] * 3
    assert attention_guidance([torch.ones(2, 8, 4)] * 3, coarse).item() < 1e-6  # upsampled constant = uniform


def test_reid_losses_weigh_the_guide_term_only_when_maps_are_given():
    from sangal.models.reid_net import ReIDOutput
    from sangal.train.losses import reid_losses

    torch.manual_seed(0)
    feats = torch.randn(8, 16)
    pids = torch.arange(4).repeat_interleave(2)
    att = tuple(torch.rand(8, 4, 2) for _ in range(3))
    maps = tuple(torch.rand(8, 3, 4, 2) for _ in range(3))
    out = ReIDOutput(feats, feats, torch.randn(8, 4), None, att)
    plain = reid_losses(out, pids, None, {"guide": 5.0})
    assert "guide" not in plain
    guided = reid_losses(out, pids, None, {"guide": 5.0}, guide_maps=maps)
    assert guided["guide"].item() > 0
    assert torch.allclose(guided["total"], plain["total"] + 5.0 * guided["guide"])
    assert "guide" not in reid_losses(out, pids, None, {"guide": 0.0}, guide_maps=maps)
