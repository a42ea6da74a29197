"""Class-balanced resampling and distillation losses against independent computations."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from modeling_amlpf.training.losses import distillation_loss
from modeling_amlpf.training.resampling import (
    DEFAULT_MIN_CLASS_SHARE,
    ClassBalancedSampler,
    class_difficulty_weights,
    expected_class_mass,
    per_sample_weights,
)


def _reference_class_weights(probs, labels, num_classes, gamma):
    """The paper's w_c = mean_{i in c} (1 - p_i)^gamma, written plainly."""
    weights = []
    for c in range(num_classes):
        terms = [(1 - p) ** gamma for p, y in zip(probs, labels) if y == c]
        weights.append(sum(terms) / len(terms))
    return weights


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
def test_class_weights_equal_the_papers_formula(gamma):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200).tolist()
    probs = rng.uniform(0, 1, 200).tolist()
    got = class_difficulty_weights(torch.tensor(probs), torch.tensor(labels), 4, gamma)
    np.testing.assert_allclose(got.numpy(), _reference_class_weights(probs, labels, 4, gamma), rtol=1e-7)


def test_known_probabilities_give_known_weights():
    # class 0: p = 0.5, 0.9 -> ((0.5)^2 + (0.1)^2) / 2 = 0.13 ; class 1: p = 0.0 -> 1.0 ; class 2: absent
    got = class_difficulty_weights(torch.tensor([0.5, 0.9, 0.0]), torch.tensor([0, 0, 1]), 3, 2.0,
                                   previous=torch.tensor([0.2, 0.3, 0.7]))
    np.testing.assert_allclose(got.numpy(), [0.13, 1.0, 0.7], rtol=1e-6)  # absent class keeps its weight


def test_difficulty_mode_class_mass_is_count_times_weight():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    mass = expected_class_mass(labels, w, "difficulty")
    n = torch.tensor([60.0, 30.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(mass, n * w / (n * w).sum())


def test_inverse_frequency_mode_class_mass_follows_weights_only():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    mass = expected_class_mass(labels, w, "difficulty_inverse_frequency")
    torch.testing.assert_close(mass, w / w.sum())
    sample_w = per_sample_weights(labels, w, "difficulty_inverse_frequency")
    assert float(sample_w[0]) == pytest.approx(0.1 / 60) and float(sample_w[-1]) == pytest.approx(0.9 / 10)


def test_epoch_one_is_uniform_with_replacement_and_length_is_constant():
    labels = [0] * 70 + [1] * 20 + [2] * 10
    sampler = ClassBalancedSampler(labels, 3, seed=5)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 100 and len(set(first)) < 100  # some rows twice, as the reference
    assert first == list(sampler)  # seeded: the same stream on every rank
    permuted = ClassBalancedSampler(labels, 3, seed=5, first_epoch_sampling="permutation")
    assert sorted(permuted) == list(range(100)) and len(permuted) == 100
    sampler.set_class_weights(torch.tensor([0.01, 0.5, 1.0]))
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(second) == len(sampler) == 100


def test_weighted_draws_follow_the_expected_mass_and_are_seeded():
    labels = torch.tensor([0] * 700 + [1] * 200 + [2] * 100)
    sampler = ClassBalancedSampler(labels, 3, mode="difficulty", seed=3, num_samples=20000)
    weights = torch.tensor([0.05, 0.5, 1.0])
    sampler.set_class_weights(weights)
    sampler.set_epoch(4)
    draws = list(sampler)
    counts = Counter(int(labels[i]) for i in draws)
    expected = expected_class_mass(labels, weights.double(), "difficulty")
    for c in range(3):
        assert counts[c] / 20000 == pytest.approx(float(expected[c]), abs=0.015)
    again = list(sampler)
    assert draws == again  # same seed + epoch -> same stream (identical on every rank)
    sampler.set_epoch(5)
    assert list(sampler) != draws  # a fresh draw each epoch


def test_sampler_state_round_trip():
    sampler = ClassBalancedSampler([0, 1, 1, 2], 3, seed=1)
    sampler.set_class_weights(torch.tensor([0.2, 0.3, 0.5]))
    sampler.set_epoch(7)
    other = ClassBalancedSampler([0, 1, 1, 2], 3, seed=1)
    other.load_state_dict(sampler.state_dict())
    assert other.epoch == 7 and list(other) == list(sampler)
    assert sampler.state_dict()["min_class_share"] == DEFAULT_MIN_CLASS_SHARE
    with pytest.raises(ValueError, match="mode"):
        ClassBalancedSampler([0, 1], 2, mode="difficulty_inverse_frequency").load_state_dict(sampler.state_dict())


def test_sampler_rejects_bad_labels_and_weights():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ClassBalancedSampler([0, 2], 2)
    sampler = ClassBalancedSampler([0, 1], 2)
    with pytest.raises(ValueError, match="finite non-negative"):
        sampler.set_class_weights(torch.tensor([float("nan"), 1.0]))


# ------------------------------------------------------------------------------------------------ share floor
BREAKHIS_COUNTS = [444, 1014, 453, 569, 3451, 626, 792, 560]


def _floored_shares(raw_shares, min_class_share):
    """The floor rule written independently: s'_c = max(f, lam * s_c) with f = min_class_share / K and lam found
    by bisection so that the shares sum to 1."""
    raw = np.asarray(raw_shares, dtype=np.float64)
    raw = raw / raw.sum()
    f = min_class_share / len(raw)
    lo, hi = 0.0, 1.0 / max(raw[raw > 0].min(), 1e-300)
    for _ in range(400):
        lam = (lo + hi) / 2
        if np.maximum(f, lam * raw).sum() > 1.0:
            hi = lam
        else:
            lo = lam
    return np.maximum(f, lo * raw)


def _draw_counts(sampler, labels, epoch):
    sampler.set_epoch(epoch)
    return np.bincount(labels.numpy()[list(sampler)], minlength=len(BREAKHIS_COUNTS))


@pytest.fixture
def breakhis_labels():
    return torch.cat([torch.full((n,), c) for c, n in enumerate(BREAKHIS_COUNTS)])


def test_an_easy_class_keeps_being_drawn_and_is_drawn_again_once_hard(breakhis_labels):
    """Issue example: class 0 at (1 - p)^2 = 1e-8, the others at 1e-2. The reference formula gives class 0 an
    expected 4.7e-4 draws per epoch (starved for good); the floor keeps it drawn in every epoch, and when it
    becomes the hardest class its next epoch's share follows the rule."""
    labels = breakhis_labels
    counts = np.array(BREAKHIS_COUNTS, dtype=np.float64)
    n = len(labels)
    weights = np.array([1e-8] + [1e-2] * 7)

    reference = ClassBalancedSampler(labels, 8, seed=0, min_class_share=0.0)
    reference.set_class_weights(torch.tensor(weights))
    assert n * float(reference.class_shares()[0]) == pytest.approx(n * 444e-8 / (counts @ weights), rel=1e-9)
    assert all(_draw_counts(reference, labels, epoch)[0] == 0 for epoch in range(1, 6))  # the starvation

    sampler = ClassBalancedSampler(labels, 8, seed=0)
    sampler.set_class_weights(torch.tensor(weights))
    expected = _floored_shares(counts * weights, DEFAULT_MIN_CLASS_SHARE)
    assert expected[0] == pytest.approx(DEFAULT_MIN_CLASS_SHARE / 8)
    np.testing.assert_allclose(sampler.class_shares().numpy(), expected, rtol=1e-9)
    for epoch in range(1, 6):
        drawn = _draw_counts(sampler, labels, epoch)
        assert drawn[0] > 0, epoch  # never starved
        assert abs(drawn[0] - n * expected[0]) < 5 * math.sqrt(n * expected[0])  # binomial, 5 standard deviations

    # Epoch 5's records: class 0 is now the hardest (p = 0.1 -> 0.81), the others easy (p = 0.9 -> 0.01).
    sampler.set_epoch(5)
    drawn = torch.tensor(list(sampler))
    probs = torch.full(drawn.shape, 0.9, dtype=torch.float64).masked_fill(labels[drawn] == 0, 0.1)
    new_weights = class_difficulty_weights(probs, labels[drawn], 8, 2.0, previous=torch.tensor(weights))
    np.testing.assert_allclose(new_weights.numpy(), [0.81] + [0.01] * 7, rtol=1e-9)
    sampler.set_class_weights(new_weights)
    expected = _floored_shares(counts * np.array([0.81] + [0.01] * 7), DEFAULT_MIN_CLASS_SHARE)
    np.testing.assert_allclose(sampler.class_shares().numpy(), expected, rtol=1e-9)
    assert expected[0] > 0.8  # the formula's n_0 w_0 / sum share, barely changed by the floor of the others
    next_epoch = _draw_counts(sampler, labels, 6)
    assert abs(next_epoch[0] / n - expected[0]) < 0.02


def test_p_true_of_one_in_float32_gives_weight_zero_but_a_floor_share():
    probs = torch.tensor([1.0, 1.0, 0.6, 0.3, 0.8], dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 2, 2])
    weights = class_difficulty_weights(probs, labels, 3)
    assert float(weights[0]) == 0.0  # the formula: exactly 0
    train_labels = torch.tensor([0] * 40 + [1] * 30 + [2] * 30)
    for share in (DEFAULT_MIN_CLASS_SHARE, 0.3):
        sampler = ClassBalancedSampler(train_labels, 3, seed=2, min_class_share=share, num_samples=3000)
        sampler.set_class_weights(weights)
        raw = np.array([40, 30, 30]) * weights.numpy()
        np.testing.assert_allclose(sampler.class_shares().numpy(), _floored_shares(raw, share), rtol=1e-9)
        assert float(sampler.class_shares()[0]) == pytest.approx(share / 3)
        sampler.set_epoch(1)
        assert sum(1 for i in sampler if train_labels[i] == 0) > 0
    reference = ClassBalancedSampler(train_labels, 3, seed=2, min_class_share=0.0)
    reference.set_class_weights(weights)
    reference.set_epoch(1)
    assert float(reference.class_shares()[0]) == 0.0 and all(train_labels[i] != 0 for i in reference)


@pytest.mark.parametrize("mode", ["difficulty", "difficulty_inverse_frequency"])
def test_the_floor_leaves_shares_above_it_untouched(mode):
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    floored = expected_class_mass(labels, w, mode, min_class_share=DEFAULT_MIN_CLASS_SHARE)
    torch.testing.assert_close(floored, expected_class_mass(labels, w, mode))  # all shares above 0.1 / 3
    sampler = ClassBalancedSampler(labels, 3, mode=mode)
    sampler.set_class_weights(w)
    torch.testing.assert_close(sampler.class_shares(), floored)
    per_sample = sampler.sample_weights()
    torch.testing.assert_close(per_sample / per_sample.sum(), per_sample_weights(labels, w, mode) /
                               per_sample_weights(labels, w, mode).sum())


def test_inverse_frequency_mode_with_a_binding_floor():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = torch.tensor([1e-6, 0.4, 0.9], dtype=torch.float64)
    got = expected_class_mass(labels, w, "difficulty_inverse_frequency", min_class_share=0.3)
    np.testing.assert_allclose(got.numpy(), _floored_shares(w.numpy(), 0.3), rtol=1e-9)
    assert float(got[0]) == pytest.approx(0.1)


def test_classes_without_samples_get_no_share_and_bad_floors_are_refused():
    labels = torch.tensor([0] * 5 + [2] * 5)  # class 1 has no training samples
    sampler = ClassBalancedSampler(labels, 3)
    sampler.set_class_weights(torch.tensor([1e-9, 1.0, 1.0]))
    shares = sampler.class_shares()
    assert float(shares[1]) == 0.0 and float(shares[0]) == pytest.approx(DEFAULT_MIN_CLASS_SHARE / 2)
    sampler.set_class_weights(torch.zeros(3))  # every class perfectly learnt: uniform over samples
    torch.testing.assert_close(sampler.class_shares(), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="min_class_share"):
        ClassBalancedSampler(labels, 3, min_class_share=1.5)


# ------------------------------------------------------------------------------------------------ losses
def _probs(logits, t=1.0):
    e = np.exp(logits / t - (logits / t).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def logits_pair():
    rng = np.random.default_rng(7)
    return rng.normal(size=(6, 4)) * 2, rng.normal(size=(6, 4)) * 2


def test_l2_is_the_unsquared_frobenius_norm_over_the_batch(logits_pair):
    s, t = logits_pair
    expected = math.sqrt(((_probs(s) - _probs(t)) ** 2).sum())
    got = distillation_loss(torch.tensor(s), torch.tensor(t), "l2")
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # grows with batch size: duplicating the batch multiplies it by sqrt(2)
    doubled = distillation_loss(torch.tensor(np.vstack([s, s])), torch.tensor(np.vstack([t, t])), "l2")
    assert float(doubled) == pytest.approx(expected * math.sqrt(2), rel=1e-6)


def test_other_kd_losses_match_independent_computations(logits_pair):
    s, t = logits_pair
    ps, pt = _probs(s), _probs(t)
    per_sample = np.sqrt(((ps - pt) ** 2).sum(axis=1)).mean()
    s_t, t_t = torch.tensor(s), torch.tensor(t)
    assert float(distillation_loss(s_t, t_t, "l2_per_sample")) == pytest.approx(per_sample, rel=1e-6)
    assert float(distillation_loss(s_t, t_t, "mse")) == pytest.approx(((ps - pt) ** 2).mean(), rel=1e-6)
    temp = 2.5
    ps_t, pt_t = _probs(s, temp), _probs(t, temp)
    kl = (pt_t * (np.log(pt_t) - np.log(ps_t))).sum(axis=1).mean() * temp**2
    got = distillation_loss(torch.tensor(s), torch.tensor(t), "kl", temperature=temp)
    assert float(got) == pytest.approx(kl, rel=1e-6)


def test_kd_gradient_flows_to_the_student_only(logits_pair):
    s, t = (torch.tensor(x, requires_grad=True) for x in logits_pair)
    distillation_loss(s, t, "l2").backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_kd_loss_errors_are_clear():
    with pytest.raises(ValueError, match="same classes"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="kd_loss must be one of"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l1")


def test_a_class_without_training_draws_has_a_null_mean_probability_not_zero(tmp_path):
    """mean_true_class_prob of a class no training image of the epoch belongs to is undefined: null in the JSON
    history (0.0 would read as a class the model always gets wrong)."""
    import json
    from types import SimpleNamespace

    from datasets import Dataset

    from modeling_amlpf.training.resampling import HISTORY_NAME, ClassBalancedResampling

    callback = ClassBalancedResampling(["a", "b", "c"])
    callback.sampler_for(Dataset.from_dict({"label": [0, 0, 1, 1, 1, 2]}), seed=0)
    callback._gathered = torch.tensor([[0, 0.2], [0, 0.6], [1, 0.9]], dtype=torch.float64)  # no draw of "c"
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True)
    callback._end_epoch(args, SimpleNamespace(epoch=1.0, log_history=[], global_step=3), None)
    written = json.loads((tmp_path / HISTORY_NAME).read_text())["epochs"][-1]["mean_true_class_prob"]
    assert written["a"] == pytest.approx(0.4) and written["b"] == pytest.approx(0.9) and written["c"] is None
