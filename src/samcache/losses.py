"""Training losses beyond cross-entropy: focal loss and the Dice regulariser of attention maps.

Focal loss (Lin et al. 2017; seed 001's main loss) down-weights well-classified samples:
``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the predicted probability of the true
class. Single-label tasks use the softmax over the logits, multi-label tasks a sigmoid per label.

How the softmax form relates to ``torchvision.ops.sigmoid_focal_loss``: with two logits
``(z0, z1)`` the softmax probability of class 1 is ``sigmoid(z1 - z0)``, so the 2-logit focal
loss of a sample equals torchvision's sigmoid focal loss of the single logit ``z1 - z0`` with the
same target, ``gamma`` and ``alpha`` (``alpha`` weights class 1, ``1 - alpha`` class 0; ``None``
here is torchvision's ``alpha = -1``, no weighting). With more classes there is no sigmoid
counterpart and ``alpha`` is refused. Seed 001's authors used gamma = 2 without alpha.

The Dice regulariser (seed 001, eq. 4) compares an attention map ``A`` with a reference ROI map
``Ā``: ``1 - 2 Σ a·ā / Σ (a + ā)``. The sums run over the whole batch treated as one tensor, not
per image, so a batch in which some reference maps are empty never divides by zero.

Segmentation losses of the dense heads (seeds 002 and 004) take logits (B, K, H, W) and binary
targets of the same shape, and come from MONAI and torchvision, whose options name the
equation variant:

* ``soft_dice_loss`` (AER-Net's eq. 1): ``1 - 2 Σ p g / (Σ p² + Σ g²)`` per image and channel
  (MONAI's ``DiceLoss(squared_pred=True)``), averaged over them; MONAI adds 1e-5 to the numerator
  and the denominator, so an empty prediction of an empty mask costs 0, not 0/0;
* ``hybrid_loss`` (Thwin & Park, UNet 3+'s "hybrid loss"): focal loss (``torchvision.ops.
  sigmoid_focal_loss``, Lin et al.'s α = 0.25, γ = 2, mean over pixels) + (1 − SSIM) (MONAI's
  ``SSIMLoss``: Gaussian window 11, σ 1.5, k1 0.01, k2 0.03, data range 1, as
  ``tf.image.ssim`` and scikit-image's Gaussian SSIM) + (1 − soft Jaccard) (MONAI's
  ``DiceLoss(jaccard=True)``: ``1 - Σ p g / (Σ p + Σ g - Σ p g)`` per image and channel), with
  equal weights. The tests check each term against a numpy form of its equation (SSIM against
  scikit-image).

SANet's losses (seed 003, the last section) take the same inputs; p = sigmoid(logits) and
p_t = p where y = 1, 1 - p where y = 0:

* ``global_balancing_ce``, GBCEL, eqs. (7)-(8). The printed signs are garbled (a "-F" in front
  of a loss that is already positive); the text and Fig. 3 describe a focal loss
  F(p_t) = -(1 - p_t)^γ log p_t whose outlier branch is a smooth truncation (Zhou et al.'s
  smooth truncated loss): for p_t < θ the loss is F(θ) + ½ (1 - p_t² / θ²), which equals F at
  p_t = θ and stays below F(θ) + ½, so badly misclassified (possibly mislabelled) pixels stop
  dominating the sum. θ = 0 is the plain focal loss, and γ = 0 with θ = 0 the binary
  cross-entropy. Fig. 3 draws the truncation at 0.2 (the default) and Table 2 finds γ = 1 best
  (the default). The equations print α where the text means θ. The paper's class weight ω
  appears in no equation; here it multiplies each channel's terms before the mean over
  pixels, channels and images (the mean is not renormalised by Σ ω).
* ``global_balancing_jaccard``, GBJAL, eq. (4): 0.5 JAL_micro + 0.5 JAL_macro with sums over
  the whole batch ("global"), so a batch whose images are blank for one attribute does not
  divide by zero per image. JAL_k of channel k is 1 - Σ p q / (Σ p² + Σ q² - Σ p q) over all
  images and pixels ("standard": Yuan et al. 2017's squared Jaccard distance); eq. (3) as
  printed lacks the - Σ p q ("printed": it is then half a Dice loss plus ½ and cannot go
  below ½). JAL_macro is the mean of JAL_k over channels (eq. (5)'s denominator is garbled;
  the text says "the average among them"); JAL_micro is eq. (6), the same sums taken over
  channels too; ``batch_jaccard_loss`` gives either alone. ε = 1e-5 is added to numerator and
  denominator (as MONAI does), so an empty prediction of an empty batch costs 0. MONAI's
  ``DiceLoss(jaccard=True, squared_pred=True, batch=True)`` is the standard form only up to
  where ε enters (it computes 1 - (2 I + ε) / (2 (P + Q - I) + ε)), and it derives I from
  norms, (‖p‖² + ‖q‖² - ‖p - q‖²) / 2, a difference that loses float32 precision when the
  intersection is small against Σ p² + Σ q² (rare attributes); both forms are therefore
  written out here, and the tests compare the standard one with MONAI's (smoothing 2 ε).
* ``sanet_loss``, eq. (9): L = 0.5 GBCEL + 0.5 GBJAL ("gbl"); Table 2's baseline, eq. (2):
  0.5 BCE + 0.5 JAL, JAL the macro Jaccard loss with batch sums ("ce_jal").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_type: str,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> torch.Tensor:
    """Mean focal loss of a batch: softmax for single-label tasks, sigmoid for multi-label ones."""
    if task_type == "multilabel":
        y = labels.float()
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * (1 - p_t) ** gamma
        if alpha is not None:
            loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
        return loss.mean()
    y = labels.long()
    log_p_t = F.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        if logits.shape[1] != 2:
            raise ValueError(
                f"focal loss: 'focal_alpha' weights the positive class of a two-class task; this "
                f"task has {logits.shape[1]} classes. Set head_args.focal_alpha to null."
            )
        loss = torch.where(y == 1, alpha, 1 - alpha) * loss
    return loss.mean()


def dice_loss(attention: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Seed 001's eq. (4) over the whole batch as one tensor: ``1 - 2 Σ a·ā / Σ (a + ā)``."""
    if attention.shape != reference.shape:
        raise ValueError(
            f"dice_loss: attention {tuple(attention.shape)} and reference "
            f"{tuple(reference.shape)} differ in shape"
        )
    return 1 - 2 * (attention * reference).sum() / (attention + reference).sum()


def downsample_roi(roi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) reference map averaged over areas down to ``size`` (values stay in [0, 1]).

    Seed 001 downsamples the image-sized reference to the size of each attention map; the
    authors' code averages areas (adaptive average pooling), which keeps the fraction of ROI
    pixels under each attention cell rather than a nearest-neighbour sample of it.
    """
    if tuple(roi.shape[-2:]) == tuple(size):
        return roi
    return F.adaptive_avg_pool2d(roi, size)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AER-Net's eq. (1) on ``sigmoid(logits)``, per image and channel, then the mean."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, squared_pred=True)(logits, target.float())


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Σ p g / (Σ p + Σ g - Σ p g)`` on ``sigmoid(logits)``, per image and channel."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, jaccard=True)(logits, target.float())


def ssim_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM(sigmoid(logits), target)``: Gaussian 11 x 11 window, σ 1.5, data range 1."""
    from monai.losses import SSIMLoss

    return SSIMLoss(spatial_dims=2, data_range=1.0)(torch.sigmoid(logits), target.float())


def pixel_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss of every pixel (torchvision's), the mean over pixels and channels."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, target.float(), alpha=alpha, gamma=gamma, reduction="mean")


def hybrid_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """Thwin & Park's loss: focal + (1 - SSIM) + (1 - soft Jaccard), equal weights."""
    return (
        pixel_focal_loss(logits, target, alpha=focal_alpha, gamma=focal_gamma)
        + ssim_loss(logits, target)
        + soft_jaccard_loss(logits, target)
    )


# --- SANet (seed 003): the global balancing loss; readings in the module docstring ---------

JACCARD_FORMS = ("standard", "printed")
JACCARD_AVERAGES = ("macro", "micro")
SANET_LOSSES = ("gbl", "ce_jal")
JACCARD_EPS = 1e-5


def _check_dense_pair(logits: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if logits.dim() != 4 or logits.shape != target.shape:
        raise ValueError(
            f"{what}: logits {tuple(logits.shape)} and target {tuple(target.shape)} must both be "
            "(B, K, H, W)"
        )


def _work(logits: torch.Tensor) -> torch.Tensor:
    # Half-precision sums over a whole batch of pixels lose the rare attributes: use float32.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def global_balancing_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 1.0,
    theta: float = 0.2,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """SANet's GBCEL, eqs. (7)-(8): focal loss, smoothly truncated below ``p_t = theta``."""
    _check_gbl(gamma, theta)
    _check_dense_pair(logits, target, "global_balancing_ce")
    z = _work(logits)
    z_t = z * (2 * target.to(z.dtype) - 1)  # logit of p_t
    # log p_t and log(1 - p_t) from log-sigmoids: finite values and gradients at any logit
    focal = -torch.exp(gamma * F.logsigmoid(-z_t)) * F.logsigmoid(z_t)
    loss = focal
    if theta > 0:
        p_t = torch.sigmoid(z_t)
        at_theta = -((1 - theta) ** gamma) * math.log(theta)
        loss = torch.where(p_t < theta, at_theta + 0.5 * (1 - p_t**2 / theta**2), focal)
    if class_weights is not None:
        k = logits.shape[1]
        w = torch.as_tensor(class_weights, dtype=z.dtype, device=z.device)
        if w.shape != (k,):
            raise ValueError(
                f"head_args.class_weights needs one weight per channel ({k}); got {tuple(w.shape)}"
            )
        loss = loss * w[None, :, None, None]
    return loss.mean().to(logits.dtype)


def _jaccard(inter: torch.Tensor, pp: torch.Tensor, qq: torch.Tensor, form: str) -> torch.Tensor:
    union = pp + qq - inter if form == "standard" else pp + qq
    return 1 - (inter + JACCARD_EPS) / (union + JACCARD_EPS)


def _check_gbl(gamma: float, theta: float) -> None:
    if not 0 <= theta < 1:
        raise ValueError(f"head_args.gbl_theta must be in [0, 1); got {theta}")
    if not gamma >= 0:
        raise ValueError(f"head_args.gbl_gamma must be >= 0; got {gamma}")


def _check_form(form: str) -> None:
    if form not in JACCARD_FORMS:
        raise ValueError(f"head_args.jaccard_form must be one of {JACCARD_FORMS}; got {form!r}")


def check_sanet_loss(*, loss: str, gamma: float, theta: float, form: str) -> None:
    """Refuse settings ``sanet_loss`` would refuse, before any batch (a head's constructor)."""
    if loss not in SANET_LOSSES:
        raise ValueError(f"head_args.loss must be one of {SANET_LOSSES}; got {loss!r}")
    _check_gbl(gamma, theta)
    _check_form(form)


def _jaccard_sums(
    logits: torch.Tensor, target: torch.Tensor, form: str, what: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel Σ p q, Σ p², Σ q² over images and pixels."""
    _check_form(form)
    _check_dense_pair(logits, target, what)
    p = torch.sigmoid(_work(logits))
    q = target.to(p.dtype)
    dims = (0, 2, 3)
    return (p * q).sum(dims), (p * p).sum(dims), (q * q).sum(dims)


def batch_jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    form: str = "standard",
    average: str = "macro",
) -> torch.Tensor:
    """SANet's JAL with sums over the batch: ``macro`` the mean of JAL_k over channels (eq. 5),
    ``micro`` one JAL over all channels' sums (eq. 6); ``form`` as in the section comment."""
    if average not in JACCARD_AVERAGES:
        raise ValueError(f"batch_jaccard_loss: average must be one of {JACCARD_AVERAGES}")
    inter, pp, qq = _jaccard_sums(logits, target, form, "batch_jaccard_loss")
    if average == "micro":
        return _jaccard(inter.sum(), pp.sum(), qq.sum(), form).to(logits.dtype)
    return _jaccard(inter, pp, qq, form).mean().to(logits.dtype)


def global_balancing_jaccard(
    logits: torch.Tensor, target: torch.Tensor, *, form: str = "standard"
) -> torch.Tensor:
    """SANet's GBJAL, eq. (4): ``0.5 JAL_micro + 0.5 JAL_macro``, sums over the whole batch."""
    inter, pp, qq = _jaccard_sums(logits, target, form, "global_balancing_jaccard")
    micro = _jaccard(inter.sum(), pp.sum(), qq.sum(), form)
    macro = _jaccard(inter, pp, qq, form).mean()
    return (0.5 * micro + 0.5 * macro).to(logits.dtype)


def sanet_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: str = "gbl",
    gamma: float = 1.0,
    theta: float = 0.2,
    form: str = "standard",
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Eq. (9), ``0.5 GBCEL + 0.5 GBJAL`` (``"gbl"``), or Table 2's baseline, eq. (2),
    ``0.5 BCE + 0.5 JAL_macro`` (``"ce_jal"``; ``gamma`` and ``theta`` unused). ``class_weights``
    weight the cross-entropy term of either."""
    if loss not in SANET_LOSSES:
        raise ValueError(f"head_args.loss must be one of {SANET_LOSSES}; got {loss!r}")
    if loss == "ce_jal":
        # GBCEL at γ = 0, θ = 0 is the binary cross-entropy, mean over pixels
        ce = global_balancing_ce(logits, target, gamma=0.0, theta=0.0, class_weights=class_weights)
        return 0.5 * ce + 0.5 * batch_jaccard_loss(logits, target, form=form)
    ce = global_balancing_ce(logits, target, gamma=gamma, theta=theta, class_weights=class_weights)
    return 0.5 * ce + 0.5 * global_balancing_jaccard(logits, target, form=form)
