"""Robustness against scaling (`effscale analyze robustness STUDY_DIR`): for every model a study
trained (its weights kept in STUDY_DIR/models), clean top-1, FGSM and PGD attack success, the
classification margin and its erosion, and the input-gradient norm, on the study's test data.

Attacks are L-infinity, on the [0, 1] pixel scale of the stored images, through the model's own
preprocessing (resize to its resolution, normalise): what an adversary who controls the pixels
can do. FGSM: one step of size eps along the sign of the loss gradient. PGD (Madry et al. 2018):
a uniform random start in the eps-ball, then `steps` steps of size 2.5 eps / steps along the
gradient sign, each projected back onto the ball and onto [0, 1]. Attack success: the share of the
test images the model classified correctly that the attack makes it misclassify. Margin: the true
class's logit minus the best other logit (negative = wrong); its erosion is the drop of the median
margin under attack. Input-gradient norm: the mean l1 norm of the cross-entropy's gradient with
respect to the [0, 1] pixels, a first-order measure of how far a small perturbation moves the loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import EffscaleError

EPSILONS = (1 / 255, 2 / 255, 4 / 255)  # the defaults; 8 / 255 etc. by choice (each adds ~1/3 to the time)
PGD_STEPS = 10
PGD_STEP_FACTOR = 2.5  # step size = 2.5 eps / steps (Madry et al.)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other logit, per sample."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(1).values


def attack(model, preprocess, images: torch.Tensor, labels: torch.Tensor, eps: float, *, steps: int = 1,
           step_size: float | None = None, random_start: bool = False,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial [0, 1] images within `eps` (L-infinity) of `images`: FGSM with the defaults,
    PGD with `steps` > 1, `random_start` and a `step_size`. eps = 0 returns the images unchanged."""
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise EffscaleError(f"epsilon {eps!r} must be a number >= 0 (on the [0, 1] pixel scale)")
    if eps == 0:
        return images.clone()
    step_size = eps if step_size is None else step_size
    adversarial = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1
        adversarial = (images + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = F.cross_entropy(model(preprocess(adversarial)), labels)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = adversarial + step_size * gradient.sign()
            adversarial = torch.minimum(torch.maximum(adversarial, images - eps), images + eps).clamp(0, 1)
    return adversarial.detach()


def gradient_l1(model, preprocess, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: the l1 norm of d cross-entropy / d pixels (pixels on the [0, 1] scale)."""
    pixels = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(preprocess(pixels)), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient.abs().flatten(1).sum(1)


def robustness(model, preprocess, images: torch.Tensor, labels: torch.Tensor, *, epsilons=EPSILONS,
               steps: int = PGD_STEPS, seed: int = 0, batch: int = 250) -> dict:
    """Every measure of the module docstring for one model on `images` ([0, 1], N x C x H x W)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EffscaleError(f"PGD steps {steps!r} must be an integer >= 1")
    for eps in epsilons:
        if not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
            raise EffscaleError(f"epsilon {eps!r} must be a number in [0, 1] (the [0, 1] pixel scale)")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    clean_logits, grads = [], []
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        with torch.no_grad():
            clean_logits.append(model(preprocess(x)))
        grads.append(gradient_l1(model, preprocess, x, y))
    clean_logits = torch.cat(clean_logits)
    correct = clean_logits.argmax(1) == labels
    clean_margin = margins(clean_logits, labels)
    result = {"samples": len(labels), "clean_top1": round(100 * float(correct.float().mean()), 3),
              "margin_clean": _quartiles(clean_margin), "grad_l1": round(float(torch.cat(grads).mean()), 6),
              "fgsm": {}, "pgd": {}}
    for name, options in (("fgsm", {}), ("pgd", {"steps": steps, "random_start": True})):
        for eps in epsilons:
            extra = {**options, "step_size": PGD_STEP_FACTOR * eps / steps} if name == "pgd" else options
            logits = []
            for start in range(0, len(images), batch):
                x, y = images[start:start + batch], labels[start:start + batch]
                adversarial = attack(model, preprocess, x, y, eps, generator=generator, **extra)
                with torch.no_grad():
                    logits.append(model(preprocess(adversarial)))
            logits = torch.cat(logits)
            flipped = correct & (logits.argmax(1) != labels)
            attacked_margin = margins(logits, labels)
            result[name][f"{eps:.6g}"] = {
                "success": round(100 * float(flipped.sum()) / max(1, int(correct.sum())), 3),
                "top1": round(100 * float((logits.argmax(1) == labels).float().mean()), 3),
                "margin": _quartiles(attacked_margin),
                "erosion": round(float(clean_margin.median() - attacked_margin.median()), 6)}
    return result


def _quartiles(values: torch.Tensor) -> dict:
    q = torch.quantile(values.float(), torch.tensor([0.25, 0.5, 0.75]))
    return {"p25": round(float(q[0]), 6), "median": round(float(q[1]), 6), "p75": round(float(q[2]), 6)}


__all__ = ["EPSILONS", "PGD_STEPS", "attack", "gradient_l1", "margins", "robustness"]
