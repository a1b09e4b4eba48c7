"""SANet's losses (seed 003, eqs. 2-9) against numpy forms of the equations, in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torchvision.ops import sigmoid_focal_loss

from samcache.losses import (
    batch_jaccard_loss,
    global_balancing_ce,
    global_balancing_jaccard,
    sanet_loss,
)

EPS = 1e-5


def np_gbce(z, y, gamma, theta, weights=None):
    """Eqs. (7)-(8): focal loss above theta, F(theta) + (1 - p_t^2 / theta^2) / 2 below."""
    p = 1 / (1 + np.exp(-z))
    pt = np.where(y == 1, p, 1 - p)
    focal = -((1 - pt) ** gamma) * np.log(pt)
    if theta > 0:
        f_theta = -((1 - theta) ** gamma) * np.log(theta)
        loss = np.where(pt < theta, f_theta + 0.5 * (1 - pt**2 / theta**2), focal)
    else:
        loss = focal
    if weights is not None:
        loss = loss * np.asarray(weights)[None, :, None, None]
    return loss.mean()


def np_jal(p, q, form):
    """1 - (Σpq + ε) / (Σp² + Σq² [- Σpq] + ε) over all the given values."""
    inter, pp, qq = (p * q).sum(), (p * p).sum(), (q * q).sum()
    union = pp + qq - inter if form == "standard" else pp + qq
    return 1 - (inter + EPS) / (union + EPS)


def np_macro_micro(z, y, form):
    p = 1 / (1 + np.exp(-z))
    macro = np.mean([np_jal(p[:, k], y[:, k], form) for k in range(z.shape[1])])
    micro = np_jal(p, y, form)
    return macro, micro


def sample(seed, shape=(3, 5, 8, 8), scale=3.0, rate=0.2):
    rng = np.random.default_rng(seed)
    z = scale * rng.normal(size=shape)
    y = (rng.random(shape) < rate).astype(np.float64)
    return z, y


def t(a):
    return torch.from_numpy(a)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("theta", [0.0, 0.2, 0.5])
def test_gbce_is_the_truncated_focal_loss(gamma, theta):
    z, y = sample(int(10 * gamma + 100 * theta))
    ours = global_balancing_ce(t(z), t(y), gamma=gamma, theta=theta)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.item(), np_gbce(z, y, gamma, theta), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_gbce_is_continuous_at_theta(gamma):
    theta = 0.2
    for y in (1.0, 0.0):
        sides = []
        for pt in (theta - 1e-9, theta, theta + 1e-9):
            p = pt if y == 1 else 1 - pt
            z = torch.tensor([[[[math.log(p / (1 - p))]]]], dtype=torch.float64)
            target = torch.full_like(z, y)
            sides.append(global_balancing_ce(z, target, gamma=gamma, theta=theta).item())
        f_theta = -((1 - theta) ** gamma) * math.log(theta)
        np.testing.assert_allclose(sides, f_theta, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_theta_zero_is_torchvisions_focal_loss(gamma):
    z, y = sample(7)
    ours = global_balancing_ce(t(z), t(y), gamma=gamma, theta=0.0)
    ref = sigmoid_focal_loss(t(z), t(y), alpha=-1, gamma=gamma, reduction="mean")
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_gamma_and_theta_zero_is_bce():
    z, y = sample(8)
    ours = global_balancing_ce(t(z), t(y), gamma=0.0, theta=0.0)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(t(z), t(y)))


def test_truncation_bounds_outliers():
    z = torch.full((1, 1, 2, 2), -40.0, dtype=torch.float64)  # p_t ~ 4e-18 for y = 1
    y = torch.ones_like(z)
    theta, gamma = 0.2, 1.0
    bound = -((1 - theta) ** gamma) * math.log(theta) + 0.5
    assert global_balancing_ce(z, y, gamma=gamma, theta=theta).item() <= bound
    assert global_balancing_ce(z, y, gamma=gamma, theta=0.0).item() > 39


def test_class_weights_scale_each_channel():
    z, y = sample(9)
    w = [1.0, 2.0, 0.0, 0.5, 3.0]
    ours = global_balancing_ce(t(z), t(y), gamma=1.0, theta=0.2, class_weights=w)
    np.testing.assert_allclose(ours.item(), np_gbce(z, y, 1.0, 0.2, w), rtol=1e-12)
    ones = global_balancing_ce(t(z), t(y), class_weights=[1.0] * 5)
    torch.testing.assert_close(ones, global_balancing_ce(t(z), t(y)))
    with pytest.raises(ValueError, match=r"head_args\.class_weights.*5"):
        global_balancing_ce(t(z), t(y), class_weights=[1.0, 2.0])


@pytest.mark.parametrize("form", ["standard", "printed"])
def test_jaccard_losses_match_the_equations(form):
    z, y = sample(11, rate=0.05)
    macro, micro = np_macro_micro(z, y, form)
    np.testing.assert_allclose(batch_jaccard_loss(t(z), t(y), form=form).item(), macro, rtol=1e-12)
    np.testing.assert_allclose(
        batch_jaccard_loss(t(z), t(y), form=form, average="micro").item(), micro, rtol=1e-12
    )
    np.testing.assert_allclose(
        global_balancing_jaccard(t(z), t(y), form=form).item(),
        0.5 * micro + 0.5 * macro,
        rtol=1e-12,
    )


def test_standard_form_is_monais_squared_batch_jaccard():
    z, y = sample(12, rate=0.1)
    # MONAI computes 1 - (2 I + s) / (2 (P + Q - I) + s): s = 2 ε is the standard form with ε
    monai = DiceLoss(
        sigmoid=True,
        jaccard=True,
        squared_pred=True,
        batch=True,
        smooth_nr=2 * EPS,
        smooth_dr=2 * EPS,
    )
    torch.testing.assert_close(
        batch_jaccard_loss(t(z), t(y)), monai(t(z), t(y)), rtol=1e-10, atol=1e-12
    )


def test_standard_and_printed_forms_differ_as_expected():
    y = (torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    perfect = 60 * (2 * y - 1)  # p = q to within 1e-26
    assert global_balancing_jaccard(perfect, y).item() < 1e-6
    assert abs(global_balancing_jaccard(perfect, y, form="printed").item() - 0.5) < 1e-6
    z, y = sample(13)
    assert global_balancing_jaccard(t(z), t(y), form="printed") > global_balancing_jaccard(
        t(z), t(y)
    )


def test_empty_targets_are_finite_and_cost_nothing_when_predicted_empty():
    y = torch.zeros(2, 5, 8, 8, dtype=torch.float64)
    z = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    for form in ("standard", "printed"):
        assert torch.isfinite(global_balancing_jaccard(z, y, form=form))
        assert global_balancing_jaccard(torch.full_like(y, -40.0), y, form=form).item() < 1e-6
    for loss in ("gbl", "ce_jal"):
        assert torch.isfinite(sanet_loss(z, y, loss=loss))


@pytest.mark.parametrize("loss", ["gbl", "ce_jal"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gradients_are_finite_at_extreme_logits(loss, gamma):
    g = torch.Generator().manual_seed(1)
    z = (200 * torch.randn(2, 5, 8, 8, generator=g)).requires_grad_()  # float32, saturated
    y = (torch.rand(2, 5, 8, 8, generator=g) < 0.3).float()
    y[:, 4] = 0  # an attribute blank in the whole batch
    out = sanet_loss(z, y, loss=loss, gamma=gamma)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()


def test_sanet_loss_combines_the_terms():
    z, y = sample(14)
    w = [1.0, 1.5, 2.0, 0.5, 1.0]
    macro, micro = np_macro_micro(z, y, "standard")
    gbl = sanet_loss(t(z), t(y), gamma=1.0, theta=0.2, class_weights=w)
    np.testing.assert_allclose(
        gbl.item(), 0.5 * np_gbce(z, y, 1.0, 0.2, w) + 0.5 * (0.5 * micro + 0.5 * macro), rtol=1e-12
    )
    macro_p, _ = np_macro_micro(z, y, "printed")
    base = sanet_loss(t(z), t(y), loss="ce_jal", form="printed")
    bce = F.binary_cross_entropy_with_logits(t(z), t(y)).item()
    np.testing.assert_allclose(base.item(), 0.5 * bce + 0.5 * macro_p, rtol=1e-12)


def test_bad_settings_are_refused_by_name():
    z, y = sample(15)
    for theta in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"head_args\.gbl_theta"):
            global_balancing_ce(t(z), t(y), theta=theta)
    with pytest.raises(ValueError, match=r"head_args\.gbl_gamma"):
        global_balancing_ce(t(z), t(y), gamma=-1.0)
    with pytest.raises(ValueError, match=r"head_args\.loss.*gbl.*ce_jal"):
        sanet_loss(t(z), t(y), loss="dice")
    with pytest.raises(ValueError, match=r"head_args\.jaccard_form"):
        global_balancing_jaccard(t(z), t(y), form="dice")
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        global_balancing_ce(t(z), t(y[:, :2]))
