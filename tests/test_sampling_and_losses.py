"""Class-balanced resampling and distillation losses against independent computations."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from modeling_amlpf.losses import distillation_loss
from modeling_amlpf.sampling import (
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


def test_epoch_one_is_a_uniform_permutation_and_length_is_constant():
    labels = [0] * 70 + [1] * 20 + [2] * 10
    sampler = ClassBalancedSampler(labels, 3, seed=5)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(100)) and len(sampler) == 100
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
    with pytest.raises(ValueError, match="mode"):
        ClassBalancedSampler([0, 1], 2, mode="difficulty_inverse_frequency").load_state_dict(sampler.state_dict())


def test_sampler_rejects_bad_labels_and_weights():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ClassBalancedSampler([0, 2], 2)
    sampler = ClassBalancedSampler([0, 1], 2)
    with pytest.raises(ValueError, match="finite non-negative"):
        sampler.set_class_weights(torch.tensor([float("nan"), 1.0]))


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
    assert float(distillation_loss(torch.tensor(s), torch.tensor(t), "l2_per_sample")) == pytest.approx(per_sample, rel=1e-6)
    assert float(distillation_loss(torch.tensor(s), torch.tensor(t), "mse")) == pytest.approx(((ps - pt) ** 2).mean(), rel=1e-6)
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
