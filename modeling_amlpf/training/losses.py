"""Knowledge-distillation losses between the student's and the frozen teacher's image logits.

``l2`` is the reference's term: the unsquared Frobenius norm ``|| P_s - P_t ||_2`` of the whole batch's
probability difference matrix (it grows with the batch size, roughly as sqrt(B)). ``l2_per_sample`` is its
batch-size-free variant (mean over samples of the per-sample L2 norm), ``mse`` the mean squared difference
of probabilities, and ``kl`` Hinton's ``T^2 * KL(P_t^T || P_s^T)`` with temperature T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KD_LOSSES = ("l2", "l2_per_sample", "mse", "kl")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "l2", temperature: float = 1.0
) -> torch.Tensor:
    """Distillation term for (B, C) logits; the teacher side carries no gradient."""
    if kind not in KD_LOSSES:
        raise ValueError(f"kd_loss must be one of {KD_LOSSES}, got {kind!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "teacher and student must have the same classes"
        )
    if temperature <= 0:
        raise ValueError(f"kd_temperature must be positive, got {temperature}")
    student_logits = student_logits.float() / temperature
    teacher_logits = teacher_logits.detach().float() / temperature
    if kind == "kl":
        return F.kl_div(
            F.log_softmax(student_logits, dim=-1), F.log_softmax(teacher_logits, dim=-1),
            reduction="batchmean", log_target=True,
        ) * temperature**2
    diff = student_logits.softmax(dim=-1) - teacher_logits.softmax(dim=-1)
    if kind == "l2":
        return torch.linalg.matrix_norm(diff, ord="fro")
    if kind == "l2_per_sample":
        return torch.linalg.vector_norm(diff, dim=-1).mean()
    return diff.pow(2).mean()
