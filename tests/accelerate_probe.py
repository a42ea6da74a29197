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

import distill_student  # noqa: E402
from modeling_amlpf import trainers  # noqa: E402

RECORD = {"streams": {}, "batches": {}, "weights": []}


class ProbeTrainer(trainers.DistillationTrainer):
    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.model.training and self._batch_sample_index is not None:
            epoch = str(self.sampler.epoch)
            if epoch not in RECORD["streams"]:
                RECORD["streams"][epoch] = list(self.sampler)  # deterministic in (seed, epoch, weights)
            RECORD["batches"].setdefault(epoch, []).append(self._batch_sample_index.tolist())
        return inputs

    def end_epoch(self):
        super().end_epoch()
        RECORD["weights"].append(self.sampler.class_weights.tolist())


if __name__ == "__main__":
    out = Path(sys.argv[1])
    distill_student.DistillationTrainer = ProbeTrainer
    distill_student.main(sys.argv[2:])
    rank = int(os.environ.get("RANK", "0"))
    RECORD["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    (out / f"rank{rank}.json").write_text(json.dumps(RECORD))
