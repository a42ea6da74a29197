"""Run ``distill_student.main`` under ``accelerate launch`` and record, per rank, what the sampler did.

Usage: accelerate launch --num_processes 2 --cpu tests/accelerate_probe.py OUT_DIR [distill_student flags...]
Writes OUT_DIR/rank<k>.json: per epoch the sampler's global index stream, this rank's batches of sample
indices, and the class weights this rank computed at each epoch end.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import TrainerCallback  # noqa: E402

import distill_student  # noqa: E402
from modeling_amlpf.training import trainers  # noqa: E402
from modeling_amlpf.training.resampling import ClassBalancedResampling  # noqa: E402

RECORD = {"streams": {}, "batches": {}, "weights": []}


def _resampling(trainer) -> ClassBalancedResampling:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ClassBalancedResampling))


class ProbeTrainer(trainers.DistillationTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(WeightsProbe(self))  # after the resampling callback: sees the weights it just set

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            sampler = _resampling(self).sampler
            epoch = str(sampler.epoch)
            if epoch not in RECORD["streams"]:
                RECORD["streams"][epoch] = list(sampler)  # deterministic in (seed, epoch, weights)
            RECORD["batches"].setdefault(epoch, []).append(inputs["sample_index"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class WeightsProbe(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        RECORD["weights"].append(_resampling(self.trainer).sampler.class_weights.tolist())


if __name__ == "__main__":
    out = Path(sys.argv[1])
    distill_student.DistillationTrainer = ProbeTrainer
    distill_student.main(sys.argv[2:])
    rank = int(os.environ.get("RANK", "0"))
    RECORD["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    (out / f"rank{rank}.json").write_text(json.dumps(RECORD))
