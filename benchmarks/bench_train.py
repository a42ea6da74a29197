#!/usr/bin/env python
"""Images per second of one distillation training step, against the sum of its parts timed alone.

The step is the per-batch work of `Trainer`'s training loop on a `DistillationTrainer` with the
`ClassBalancedResampling` callback, called through public methods, without the other callbacks or logging:
  training_step (DistillationTrainer.compute_loss: teacher forward under no_grad, student forward with the
  callback's record of the true-class probabilities, distillation loss; backward) + NaN/Inf loss filter +
  floating_point_ops + gradient clipping (accelerator.clip_grad_norm_, max_grad_norm) + optimizer.step +
  lr_scheduler.step + zero_grad.
The parts, timed alone in the same rounds: teacher forward (no_grad); student forward + CE + distillation
loss (against fixed teacher logits) + backward + clipping + optimizer/scheduler step + zero_grad in bare
PyTorch; the resampling bookkeeping (`ClassBalancedResampling.record`). overhead_ratio = step / sum_of_parts - 1.
Every timing is `torch.utils.benchmark.Timer` (`_common.interleaved_rounds`).

Sizes: `tiny` (the committed presets, 64-pixel views) and `small_real` (a ViT-S/16 teacher with LayerScale
and the full `resnet50_clip` student at 224 pixels). The loader variant (tiny) feeds the same step from the
Trainer's own DataLoader over the demo data (`load_histo_dataset("demo")` + `training_views.attach_views`).
Host syncs: `.item()`, `.tolist()`, `bool()`, `float()`, `int()`, `.cpu()` and `.numpy()` on tensors are
counted, with their call sites, during one step and during real `Trainer.train()` steps (between on_step_begin
and on_step_end, so logging is excluded). The `teacher_cache` block comes from `bench_teacher_cache.measure`.

    python benchmarks/bench_train.py --json benchmarks/results/bench_train.json [--quick] [--device cuda]
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import sys
import tempfile
import warnings

import _common  # noqa: F401  (offline environment, repository on sys.path)
import bench_teacher_cache
import torch
from _common import (
    REPO_ROOT,
    add_device_flags,
    attention_kernels,
    base_parser,
    build_rn50_student,
    environment,
    interleaved_rounds,
    median_ratio,
    print_table,
    resolve_device_flags,
    setup_threads,
    skip_without_cuda,
    summary,
    write_json,
)
from transformers import AutoConfig, AutoModel, TrainerCallback, TrainingArguments

from modeling_amlpf import AmlpfImageProcessor, AmlpfTeacherConfig
from modeling_amlpf.data import DEMO_CLASS_NAMES, load_histo_dataset
from modeling_amlpf.pretrained.presets import TINY_PROCESSOR
from modeling_amlpf.training.losses import distillation_loss
from modeling_amlpf.training.resampling import ClassBalancedResampling
from modeling_amlpf.training.trainers import SAMPLE_INDEX, DistillationTrainer, training_collator
from modeling_amlpf.training.views import ViewEpochCallback, attach_views

TEACHER_TINY = REPO_ROOT / "configs" / "models" / "teacher-tiny"
STUDENT_TINY = REPO_ROOT / "configs" / "models" / "student-tiny"
TARGET_OVERHEAD = 0.10
KD_LOSS, KD_WEIGHT = "l2", 1.0
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
SIZES = {
    "tiny": "teacher-tiny (ViT, width 64, depth 3, 8-px patches) + student-tiny (small resnet*_clip trunk), "
            "64-pixel views",
    "small_real": "ViT-S/16 teacher with LayerScale (init_values 1e-5) + full resnet50_clip student "
                  "(OpenAI RN50 image tower, 1024-d), 224-pixel views",
}


# ------------------------------------------------------------------------------------------------ models
def build_models(size: str):
    """(teacher, student, processor) with random weights; the student's prompts are the demo prompts."""
    if size == "tiny":
        teacher = AutoModel.from_config(AutoConfig.from_pretrained(TEACHER_TINY))
        student = AutoModel.from_config(AutoConfig.from_pretrained(STUDENT_TINY))
        return teacher, student, AmlpfImageProcessor(**TINY_PROCESSOR)
    teacher = AutoModel.from_config(AmlpfTeacherConfig(
        backbone="vit_small_patch16_224",
        backbone_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        class_names=DEMO_CLASS_NAMES,
    ))
    student = build_rn50_student(DEMO_CLASS_NAMES)
    return teacher, student, AmlpfImageProcessor()


def demo_train_views(processor: AmlpfImageProcessor, seed: int):
    """The demo training split with its training views, as the training scripts build it."""
    return attach_views(load_histo_dataset("demo", split_seed=1), processor, seed=seed)["train"]


def random_batch(batch: int, views: int, crop: int, num_labels: int, device: str, channels_last: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, views, 3, crop, crop, generator=generator)
    if channels_last:  # each view channels_last in memory, as (B*V, 3, S, S) after flattening
        pixel_values = pixel_values.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return {
        "pixel_values": pixel_values.to(device),
        "labels": torch.randint(num_labels, (batch,), generator=generator).to(device),
        SAMPLE_INDEX: torch.arange(batch).numpy(),  # on the host, as training_collator leaves it
    }


# ------------------------------------------------------------------------------------------------ host syncs
def _site(frame) -> str:
    path = frame.f_code.co_filename
    for marker in ("site-packages" + os.sep, str(REPO_ROOT) + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"


class HostSyncCounter(contextlib.ContextDecorator):
    """Counts Python-level tensor-to-host reads (each one waits for the device on CUDA) by call site.

    `active` gates the counting, so that a callback can count only inside training steps.
    """

    def __init__(self, active: bool = True):
        self.active = active
        self.sites: collections.Counter = collections.Counter()
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, original):
        counter = self

        def wrapper(tensor, *args, **kwargs):
            if counter.active:
                device = tensor.device.type if isinstance(tensor, torch.Tensor) else "?"
                counter.sites[f"{name} on {device} at {_site(sys._getframe(1))}"] += 1
            return original(tensor, *args, **kwargs)

        return wrapper

    def __enter__(self):
        for name in SYNC_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        return False

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def cuda_sync_warnings(fn) -> list[str]:
    """Every synchronizing CUDA operation of `fn()`, C++ ones included (torch.cuda.set_sync_debug_mode)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message).lower()]


class _StepWindow(TrainerCallback):
    """Turns the counter on at on_step_begin and off at on_step_end (logging/saving come after)."""

    def __init__(self, counter: HostSyncCounter):
        self.counter, self.steps = counter, 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter.active = True

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.active = False
        self.steps += 1


# ------------------------------------------------------------------------------------------------ the step
class DistillationStepBench:
    """A DistillationTrainer ready to step (optimizer, scheduler, resampling callback watching the student),
    and the parts alone."""

    def __init__(self, teacher, student, train_dataset, args, output_dir: str):
        self.device = "cuda" if args.device == "cuda" else "cpu"
        self.bf16 = args.precision == "bf16"
        if args.channels_last:
            student = student.to(memory_format=torch.channels_last)
            teacher = teacher.to(memory_format=torch.channels_last)
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch, use_cpu=self.device == "cpu",
            remove_unused_columns=False, report_to="none", disable_tqdm=True, seed=args.seed,
            logging_strategy="no", save_strategy="no", dataloader_num_workers=args.num_workers,
            dataloader_persistent_workers=args.num_workers > 0, learning_rate=1e-4, weight_decay=1e-3,
        )
        class_names = [student.config.id2label[i] for i in range(student.config.num_labels)]
        self.resampling = ClassBalancedResampling(class_names, mode="difficulty")
        self.trainer = DistillationTrainer(
            model=student.to(self.device), args=training_args, train_dataset=train_dataset,
            data_collator=training_collator, teacher_model=teacher, kd_loss=KD_LOSS, kd_weight=KD_WEIGHT,
            callbacks=[ViewEpochCallback(), self.resampling],
        )
        self.trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
        self.resampling.watch(self.trainer.model)  # what on_train_begin does: record every training forward
        self.trainer.current_gradient_accumulation_steps = 1  # set by the training loop per update
        # Trainer.training_step runs compute_loss (student and teacher forwards, losses) inside this context
        # and the backward outside it: the place for autocast, covering the teacher too.
        self.trainer.compute_loss_context_manager = self.autocast
        self.model, self.teacher = self.trainer.model, self.trainer.teacher
        self.tr_loss = torch.zeros((), device=self.device)
        self.fixed: dict[str, torch.Tensor] = {}

    def autocast(self):
        """bf16 autocast of forward passes and losses (a fresh context each time), or nothing for fp32."""
        return torch.autocast(self.device, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    # The Trainer path -----------------------------------------------------------------------------------
    def step(self, inputs: dict) -> None:
        """What Trainer's training loop does per batch (gradient_accumulation_steps=1), minus callbacks."""
        trainer, args = self.trainer, self.trainer.args
        loss = trainer.training_step(self.model, dict(inputs))
        if args.logging_nan_inf_filter and (torch.isnan(loss) or torch.isinf(loss)):
            self.tr_loss += self.tr_loss / (1 + trainer.state.global_step)
        else:
            self.tr_loss += loss
        trainer.current_flos += float(trainer.floating_point_ops(inputs))
        if args.max_grad_norm > 0:
            trainer.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        self.model.zero_grad()

    # The parts ------------------------------------------------------------------------------------------
    def prepare_parts(self, inputs: dict) -> None:
        with torch.no_grad(), self.autocast():
            self.fixed["teacher_logits"] = self.teacher(pixel_values=inputs["pixel_values"]).logits.detach()
            self.fixed["student_logits"] = self.model(pixel_values=inputs["pixel_values"]).logits.detach()

    def teacher_forward(self, inputs: dict) -> None:
        with torch.no_grad(), self.autocast():
            self.teacher(pixel_values=inputs["pixel_values"])

    def student_update(self, inputs: dict) -> None:
        trainer = self.trainer
        with self.autocast():
            output = self.model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
            loss = output.loss + KD_WEIGHT * distillation_loss(output.logits, self.fixed["teacher_logits"], KD_LOSS)
        loss.backward()
        if trainer.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad()

    def bookkeeping(self, inputs: dict) -> None:
        self.resampling.record(self.fixed["student_logits"], inputs["labels"])


def measure_step(bench: DistillationStepBench, inputs: dict, rounds: int) -> dict:
    """Interleaved rounds of the Trainer step and of each part; syncs counted in a separate step."""
    bench.model.train()
    bench.prepare_parts(inputs)
    with HostSyncCounter() as counter:
        bench.step(inputs)  # also the warm-up of every kernel the parts use
    times = interleaved_rounds(
        {
            "step": lambda: bench.step(inputs),
            "teacher_forward": lambda: bench.teacher_forward(inputs),
            "student_forward_backward_step": lambda: bench.student_update(inputs),
            "bookkeeping": lambda: bench.bookkeeping(inputs),
        },
        rounds=rounds, warmup=0,
    )
    cuda_syncs = cuda_sync_warnings(lambda: bench.step(inputs)) if bench.device == "cuda" else None
    parts = [sum(values) for values in zip(*(times[k] for k in times if k != "step"))]
    batch = inputs["labels"].shape[0]
    step_s = summary(times["step"])["median_s"]
    parts_s = statistics.median(parts)
    return {
        "images_per_second": batch / step_s,
        "images_per_second_sum_of_parts": batch / parts_s,
        "step_ms": 1000 * step_s,
        "sum_of_parts_ms": 1000 * parts_s,
        "parts_ms": {k: 1000 * summary(v)["median_s"] for k, v in times.items() if k != "step"},
        "overhead_ratio": median_ratio(times["step"], parts) - 1.0,
        "host_syncs_per_step": counter.total,
        "host_sync_sites": dict(counter.sites.most_common()),
        **({"cuda_sync_debug_warnings": cuda_syncs} if cuda_syncs is not None else {}),
        "timings": {k: summary(v) for k, v in times.items()},
    }


def measure_with_loader(bench: DistillationStepBench, inputs: dict, steps: int, rounds: int) -> dict:
    """The same step fed by the Trainer's DataLoader (demo data, --num_workers) versus by a batch in memory."""
    loader = bench.trainer.get_train_dataloader()
    batches = iter(loader)

    def loader_steps() -> None:
        nonlocal batches
        for _ in range(steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            bench.step(batch)

    def memory_steps() -> None:
        for _ in range(steps):
            bench.step(inputs)

    # the warm-up starts the workers and fills their prefetch queues
    times = interleaved_rounds({"with_loader": loader_steps, "without_loader": memory_steps}, rounds=rounds, warmup=1)
    images = steps * bench.trainer.args.per_device_train_batch_size
    return {
        "num_workers": bench.trainer.args.dataloader_num_workers,
        "steps_per_round": steps,
        "rounds": rounds,
        "images_per_second_with_loader": images / statistics.median(times["with_loader"]),
        "images_per_second_without_loader": images / statistics.median(times["without_loader"]),
        "loader_slowdown": median_ratio(times["with_loader"], times["without_loader"]),
    }


def count_trainer_loop_syncs(bench: DistillationStepBench, steps: int) -> dict:
    """Host syncs inside real Trainer.train() steps (on_step_begin .. on_step_end), by call site."""
    trainer = bench.trainer
    trainer.args.max_steps = steps
    counter = HostSyncCounter(active=False)
    window = _StepWindow(counter)
    trainer.add_callback(window)
    try:
        with counter:
            trainer.train()
    finally:
        trainer.remove_callback(window)
    return {
        "steps": window.steps,
        "host_syncs_per_step": counter.total / max(window.steps, 1),
        "host_sync_sites": dict(counter.sites.most_common()),
    }


# ------------------------------------------------------------------------------------------------ run
def run_size(size: str, args, loader: bool, count_loop: bool) -> dict:
    teacher, student, processor = build_models(size)
    batch = args.batch = args.batch_tiny if size == "tiny" else args.batch_small_real
    with tempfile.TemporaryDirectory(prefix="amlpf-bench-train-") as output_dir:
        bench = DistillationStepBench(teacher, student, demo_train_views(processor, args.seed), args, output_dir)
        inputs = random_batch(batch, processor.num_views, processor.crop_size, student.config.num_labels,
                              bench.device, args.channels_last, args.seed)
        rounds = args.rounds or (args.rounds_tiny if size == "tiny" else args.rounds_small_real)
        result = {
            "description": SIZES[size],
            "batch_images": batch, "views_per_image": processor.num_views, "crop_size": processor.crop_size,
            "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
            "student_trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "optimizer": type(bench.trainer.optimizer).__name__,
            "optimizer_name": str(bench.trainer.args.optim),
            "max_grad_norm": bench.trainer.args.max_grad_norm,
            "sdpa_attention": {"teacher": attention_kernels(teacher), "student": attention_kernels(student)},
            "rounds": rounds,
        }
        result.update(measure_step(bench, inputs, rounds))
        if loader:
            result["loader"] = measure_with_loader(bench, inputs, args.loader_steps, args.loader_rounds)
        if count_loop:
            result["trainer_loop"] = count_trainer_loop_syncs(bench, steps=2 if args.quick else 4)
    result["target_met"] = {f"overhead_ratio<={TARGET_OVERHEAD:g}": result["overhead_ratio"] <= TARGET_OVERHEAD}
    return result


def run(args) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads, args.device)  # before the run: the load average at its start
    sizes = ["tiny"] if args.quick else list(SIZES)
    if args.sizes:
        sizes = args.sizes
    torch.manual_seed(args.seed)
    results = {}
    for size in sizes:
        print(f"[bench_train] {size} ...", flush=True)
        results[size] = run_size(size, args, loader=size == "tiny", count_loop=size == "tiny")
    teacher_cache = None
    if not args.skip_teacher_cache:
        print("[bench_train] teacher_cache ...", flush=True)
        teacher_cache = bench_teacher_cache.measure(quick=args.quick, seed=args.seed)
    return {
        "benchmark": "bench_train",
        "mode": "quick" if args.quick else "full",
        "definitions": {
            "step": "Trainer per-batch work: training_step (teacher fwd under no_grad, student fwd with the "
                    "resampling callback's record, KD loss, backward) + NaN/Inf filter + floating_point_ops + "
                    "grad clipping + optimizer.step + lr_scheduler.step + zero_grad",
            "sum_of_parts": "teacher forward + student fwd/CE/KD/backward/clip/optimizer step + "
                            "ClassBalancedResampling.record, each timed alone",
            "timing": "torch.utils.benchmark.Timer.blocked_autorange per variant per round, interleaved rounds",
            "overhead_ratio": "median over rounds of step / sum_of_parts - 1 (target <= 0.10; a goal, not asserted)",
            "host_syncs_per_step": "calls of Tensor.item/tolist/__bool__/__float__/__int__/cpu/numpy during one step "
                                   "(on CPU these cost nothing; on CUDA each waits for the device)",
        },
        "settings": {"device": args.device, "precision": args.precision, "channels_last": args.channels_last,
                     "num_workers": args.num_workers, "kd_loss": KD_LOSS, "kd_weight": KD_WEIGHT,
                     "resampling": "difficulty"},
        "results": results,
        **({"teacher_cache": teacher_cache} if teacher_cache is not None else {}),
        "environment": env,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    add_device_flags(parser)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES),
                        help="default: tiny (quick), tiny small_real (full)")
    parser.add_argument("--batch_tiny", type=int, default=16,
                        help="images per step at the tiny size (demo config: 16)")
    parser.add_argument("--batch_small_real", type=int,
                        help="images per step at small_real, x 9 views "
                             "(default 2 on cpu, 18 on cuda: the reference's)")
    parser.add_argument("--rounds_tiny", type=int)
    parser.add_argument("--rounds_small_real", type=int)
    parser.add_argument("--num_workers", type=int, default=0,
                        help="DataLoader workers of the loader variant (default 0, as TrainingArguments and the demo)")
    parser.add_argument("--loader_steps", type=int, default=None, help="steps per timed loader round")
    parser.add_argument("--skip_teacher_cache", action="store_true",
                        help="leave out the teacher_cache block (bench_teacher_cache.measure)")
    args = parser.parse_args(argv)
    resolve_device_flags(args)
    cuda = args.device == "cuda"
    args.batch_small_real = args.batch_small_real or (18 if cuda else 2)
    args.rounds_tiny = args.rounds_tiny or (3 if args.quick else 21)
    args.rounds_small_real = args.rounds_small_real or (10 if cuda else 5)
    args.loader_steps = args.loader_steps or (2 if args.quick else 6)
    args.loader_rounds = 2 if args.quick else 3
    threads = setup_threads(args.threads)
    if skip_without_cuda(args, "bench_train", threads):
        return {"skipped": _common.NO_CUDA}
    payload = run(args)
    rows = []
    for size, entry in payload["results"].items():
        parts = entry["parts_ms"]
        rows.append([
            size, entry["batch_images"], entry["images_per_second"], entry["step_ms"], parts["teacher_forward"],
            parts["student_forward_backward_step"], parts["bookkeeping"], entry["overhead_ratio"],
            entry["host_syncs_per_step"],
        ])
    print_table(
        ["size", "batch", "img/s", "step ms", "teacher ms", "student ms", "bookkeep ms", "overhead", "syncs/step"],
        rows, title=f"bench_train ({payload['mode']}, {args.device}, {args.precision}, "
                    f"{payload['environment']['torch_num_threads']} threads); target overhead <= {TARGET_OVERHEAD:g}",
    )
    for size, entry in payload["results"].items():
        if "loader" in entry:
            loader = entry["loader"]
            print(f"{size} with DataLoader ({loader['num_workers']} workers): "
                  f"{loader['images_per_second_with_loader']:.1f} img/s, "
                  f"without: {loader['images_per_second_without_loader']:.1f} img/s")
        if "trainer_loop" in entry:
            syncs = entry["trainer_loop"]["host_syncs_per_step"]
            print(f"{size} Trainer.train() steps: {syncs:.1f} host syncs per step")
    if "teacher_cache" in payload:
        bench_teacher_cache.print_block(payload["teacher_cache"])
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
