"""`run(settings) -> Result`: the training job from dataset snapshot to registry publish.

    preflight   settings this machine can run (checkpoint, bitsandbytes, CUDA, Redis), before anything else
    snapshot    pin the dataset version; exit early when the registry already has this build
    sft         LoRA SFT on the SFT examples and the chosen side of the training pairs
    rlhf        ORPO / DPO / SimPO / KTO continuing from the SFT adapter
    evaluate    held-out preference accuracy of candidate and production, sanity generations, gate
    export      the adapter files (and merged / quantised weights when accepted and asked for)
    publish     registry version (candidate + canary, or rejected), index and events

Nothing reaches the registry before `publish`, so a run that fails earlier leaves it untouched. Work
files live in `<work_dir>/<run id>/scratch/`: removed after a successful publish (`result.json`,
`trainer.log` with the progress lines, `held_out.jsonl` and ms-swift's `logs/` stay), kept after a
failure for inspection.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from bailu.common.checkpoint import is_checkpoint
from bailu.datasets.format import PREFERENCE_FILE, SFT_FILE
from bailu.registry import Manifest, Registry, hash_dir
from bailu.registry.model import MANIFEST
from bailu.registry.serving import version_name
from bailu.trainer import data, evaluate, export, gate, publish, swift_args, swift_runner
from bailu.trainer.errors import BadSettings, StageFailed, TrainerError
from bailu.trainer.progress import Progress
from bailu.trainer.result import Result
from bailu.trainer.settings import QuantMethod, RlhfType, TrainerSettings

log = logging.getLogger(__name__)

LOG_FILE = "trainer.log"
SCRATCH = "scratch"
# What ms-swift's `swift export --quant_method` imports for each method: (module, package to install).
QUANT_PACKAGES = {QuantMethod.GPTQ: ("optimum", "optimum (with gptqmodel)"), QuantMethod.AWQ: ("awq", "autoawq")}
HELD_OUT = "held_out.jsonl"  # the pairs the gate evaluated on (kept: `data.read_pairs` reads them back)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def run(settings: TrainerSettings, out: TextIO | None = None) -> Result:
    """Run the whole job; never raises for a failed run (the Result says why and with which exit code).
    Progress lines go to `out` (stdout); everything libraries print goes to stderr."""
    out = out or sys.stdout
    run_id = new_run_id()
    run_dir = (settings.work_dir / run_id).resolve()
    result = Result("failed", run_id, str(run_dir), settings.adapter_name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        result.exit_code, result.reason = BadSettings.exit_code, f"cannot create the work dir {run_dir}: {exc}"
        print(f"[trainer] {result.final_line()}", file=out, flush=True)
        return result
    progress = Progress(out, log_path=run_dir / LOG_FILE)
    progress.line(f"run {run_id}: adapter {settings.adapter_name} on {settings.base_model}, work dir {run_dir}")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _Job(settings, run_dir, progress, result).run()
    except TrainerError as exc:
        result.outcome, result.exit_code, result.reason = "failed", exc.exit_code, exc.message
    except Exception as exc:
        log.exception("trainer run failed unexpectedly")
        result.outcome, result.exit_code = "failed", 1
        result.reason = f"internal error: {type(exc).__name__}: {exc}"
    result.wall_s = {stage: round(seconds, 3) for stage, seconds in progress.times.items()}
    result.write()
    progress.line(result.final_line())
    return result


class _Job:
    def __init__(self, settings: TrainerSettings, run_dir: Path, progress: Progress, result: Result) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.scratch = run_dir / SCRATCH
        self.progress = progress
        self.result = result
        self.registry = Registry(settings.registry_dir)
        self.config = swift_args.training_config(settings)

    def run(self) -> None:
        s = self.settings
        model_dir = self.preflight()
        with self.progress.stage("snapshot"):
            snapshot = self.snapshot(model_dir)
            if snapshot is None:
                return
            base_sha256 = hash_dir(model_dir, exclude=(MANIFEST,))  # as the registry hashes a base version
            parent = publish.production(self.registry, s.adapter_name)
        self.progress.line("loading ms-swift")
        self.check_names()
        adapter, losses = self.train(model_dir)
        with self.progress.stage("evaluate"):
            decision, evaluation = self.evaluate(model_dir, adapter, snapshot, parent)
        with self.progress.stage("export"):
            adapter_dir = export.adapter(adapter, self.scratch / "adapter")
            exports = self.exports(model_dir, adapter_dir) if decision.accepted else []
        metrics = {
            **decision.to_dict(),
            **evaluation,
            "data": snapshot.counts(),
            "losses": losses,
            "wall_s": {stage: round(seconds, 3) for stage, seconds in self.progress.times.items()},
        }
        release = publish.Release(
            name=s.adapter_name,
            adapter_dir=adapter_dir,
            fields={
                "base_model": s.base_model,
                "base_model_sha256": base_sha256,
                "dataset_version": snapshot.version,
                "config": self.config,
                "metrics": metrics,
                "parent": parent.version if parent else None,
            },
            accepted=decision.accepted,
            canary_weight=s.canary_weight,
            exports=tuple(exports),
        )
        with self.progress.stage("publish"):
            try:
                published = publish.publish(self.registry, s.redis_url, release)
            except Exception as exc:
                log.error("publish failed", exc_info=True)
                raise StageFailed("publish", f"{type(exc).__name__}: {exc}") from exc
        if not published.indexed:
            self.progress.line(
                "warning: published to the registry files only; the gateway will not see this version until the "
                "registry index is rebuilt (set redis_url to update it and announce the change)"
            )
        r = self.result
        r.outcome = "published" if decision.accepted else "rejected"
        r.version, r.status, r.exports = published.version, published.status, published.exports
        r.indexed = published.indexed
        r.canary_weight = published.aliases.canary_weight if decision.accepted else None
        r.metrics = metrics
        r.reason = decision.explain()
        self.clean()

    # stages

    def preflight(self) -> Path:
        """What can be checked without data or ms-swift: fail fast, before anything is trained."""
        s = self.settings
        if not s.sft and s.rlhf_type == RlhfType.NONE:
            raise BadSettings("nothing to train: sft is false and rlhf_type is none")
        if s.rlhf_type == RlhfType.KTO and s.batch_size * s.grad_accum < 2:
            raise BadSettings("KTO needs a total batch (batch_size x grad_accum) of at least 2")
        if s.quant_bits:
            try:
                import bitsandbytes  # noqa: F401
            except Exception as exc:
                raise BadSettings(
                    f"quant_bits {s.quant_bits} (QLoRA) needs the bitsandbytes package, which cannot be imported "
                    f"here ({type(exc).__name__}): install it (GPU images) or set quant_bits 0"
                ) from None
        if s.quantize != QuantMethod.NONE:
            import torch

            if not torch.cuda.is_available():
                raise BadSettings(f"quantize {s.quantize.value} needs a CUDA GPU, and none is available here")
            module, package = QUANT_PACKAGES[s.quantize]
            if importlib.util.find_spec(module) is None:
                raise BadSettings(f"quantize {s.quantize.value} needs the {package} package, which is not installed")
        if s.redis_url:
            try:
                publish.ping(s.redis_url)
            except Exception as exc:
                raise BadSettings(f"cannot reach Redis at redis_url ({type(exc).__name__}: {exc})") from None
        return self.base_checkpoint()

    def base_checkpoint(self) -> Path:
        """model_path, else the base model's production (or newest) version in the registry."""
        s = self.settings
        if s.model_path is not None:
            model_dir = s.model_path.resolve()
        else:
            versions = self.registry.versions("base", s.base_model)
            if not versions:
                raise BadSettings(f"model_path is not set and the registry has no base model {s.base_model!r}")
            chosen = self.registry.aliases("base", s.base_model).production or versions[-1]
            model_dir = self.registry.version_dir("base", s.base_model, chosen)
        if not is_checkpoint(model_dir):
            raise BadSettings(f"no Hugging Face checkpoint at {model_dir} (config.json missing)")
        return model_dir

    def snapshot(self, model_dir: Path) -> data.Snapshot | None:
        """None when the registry already holds this build (the result says so)."""
        s = self.settings
        version = data.resolve_version(s.dataset_dir, s.dataset_version)
        self.result.dataset_version = version
        existing = self.registry.find_build("adapter", s.adapter_name, version, self.config)
        if existing is not None:
            self.result.outcome = "already_built"
            self.result.version, self.result.status = existing.version, existing.status
            return None
        snapshot = data.load(s.dataset_dir, version)
        data.check_enough(snapshot, s.min_pairs)
        snapshot.split = data.split_pairs(
            snapshot.pairs, fraction=s.eval_fraction, max_pairs=s.eval_max_pairs, seed=s.seed
        )
        folder = self.scratch / "data"
        sft_records = data.sft_training_set(snapshot)
        data.write_jsonl(folder / SFT_FILE, sft_records)
        data.write_jsonl(folder / PREFERENCE_FILE, (p.to_swift() for p in snapshot.split.train))
        data.write_jsonl(folder / "kto.jsonl", data.kto_records(snapshot.split.train))
        data.write_jsonl(folder / HELD_OUT, (p.to_swift() for p in snapshot.split.held_out))
        counts = snapshot.counts()
        self.progress.line(
            f"dataset {version}: {counts['pairs']} pairs ({counts['train_pairs']} train, {counts['held_out_pairs']} "
            f"held out), {counts['sft_examples']} SFT examples, {len(sft_records)} SFT training records; "
            f"checkpoint {model_dir}"
        )
        return snapshot

    def train(self, model_dir: Path) -> tuple[Path, dict[str, Any]]:
        """SFT, then the preference stage from its adapter; the last adapter and each stage's losses."""
        s = self.settings
        losses: dict[str, Any] = {}
        adapter: Path | None = None
        if s.sft:
            with self.progress.stage("sft"):
                sft_data, sft_out = self.scratch / "data" / SFT_FILE, self.scratch / "sft"
                trained = swift_runner.train(
                    "sft",
                    "sft_main",
                    lambda cb: swift_args.sft_args(s, model_dir, sft_data, sft_out, cb),
                    self.progress,
                )
                adapter, losses["sft"] = trained.checkpoint, trained.metrics()
        if s.rlhf_type != RlhfType.NONE:
            with self.progress.stage("rlhf"):
                dataset = self.scratch / "data" / ("kto.jsonl" if s.rlhf_type == RlhfType.KTO else PREFERENCE_FILE)
                sft_adapter = adapter
                trained = swift_runner.train(
                    "rlhf",
                    "rlhf_main",
                    lambda cb: swift_args.rlhf_args(s, model_dir, dataset, self.scratch / "rlhf", sft_adapter, cb),
                    self.progress,
                )
                adapter, losses[s.rlhf_type.value] = trained.checkpoint, trained.metrics()
        if adapter is None:  # preflight refuses a run with neither stage
            raise BadSettings("nothing to train: sft is false and rlhf_type is none")
        return adapter, losses

    def check_names(self) -> None:
        """model_type and template must be ones ms-swift knows (checked once it is imported)."""
        swift_runner.import_swift()
        from swift.model import MODEL_MAPPING
        from swift.template import TEMPLATE_MAPPING

        if self.settings.model_type not in MODEL_MAPPING:
            raise BadSettings(f"model_type {self.settings.model_type!r} is not an ms-swift model type")
        if self.settings.template not in TEMPLATE_MAPPING:
            raise BadSettings(f"template {self.settings.template!r} is not an ms-swift template")

    def evaluate(
        self, model_dir: Path, adapter: Path, snapshot: data.Snapshot, parent: Manifest | None
    ) -> tuple[gate.GateDecision, dict[str, Any]]:
        s = self.settings
        held = snapshot.split.held_out[: s.eval_max_pairs]
        prompts: list[data.Messages] = []
        for pair in held:
            if len(prompts) < s.sanity_prompts and pair.messages not in prompts:
                prompts.append(pair.messages)
        baseline_dir: Path | None = None
        baseline = "base"
        if parent is not None and parent.base_model == s.base_model:
            baseline_dir = self.registry.version_dir("adapter", s.adapter_name, parent.version)
            baseline = version_name(s.adapter_name, parent.version)

        def load(adapter_dir: Path | None) -> evaluate.Evaluator:
            return evaluate.Evaluator(
                model_dir, adapter_dir, model_type=s.model_type, template=s.template, max_length=s.max_length
            )

        try:
            with load(adapter) as candidate:
                score = candidate.preference_accuracy(held)
                texts = candidate.generate(prompts, s.sanity_max_tokens, s.seed)
            if not math.isfinite(score.mean_margin):
                raise StageFailed("evaluate", "the candidate's log-probabilities are not finite (training diverged)")
            self.progress.line(f"candidate: held-out accuracy {score.accuracy:.3f} on {score.pairs} pairs")
            with load(baseline_dir) as production:
                base_score = production.preference_accuracy(held)
                base_texts = production.generate(prompts, s.sanity_max_tokens, s.seed)
            self.progress.line(f"baseline {baseline}: held-out accuracy {base_score.accuracy:.3f}")
        except StageFailed:
            raise
        except Exception as exc:
            log.error("evaluation failed", exc_info=True)
            raise StageFailed("evaluate", f"{type(exc).__name__}: {exc}") from exc
        sanity = evaluate.sanity_check(prompts, texts)
        baseline_sanity = evaluate.sanity_check(prompts, base_texts)
        decision = gate.decide(score.accuracy, base_score.accuracy, s.gate_margin, sanity, baseline_sanity)
        passed = sum(result.problem is None for result in sanity)
        base_passed = sum(result.problem is None for result in baseline_sanity)
        self.progress.line(
            f"sanity: {passed}/{len(sanity)} generations usable (baseline: {base_passed}/{len(baseline_sanity)})"
            if sanity
            else "sanity: skipped"
        )
        self.progress.line(f"gate: {'accepted' if decision.accepted else 'rejected'}: {decision.explain()}")
        details = {
            "baseline": baseline,
            "candidate_eval": score.to_dict(),
            "baseline_eval": base_score.to_dict(),
            "sanity": [result.to_dict() for result in sanity],
            "baseline_sanity": [result.to_dict() for result in baseline_sanity],
        }
        return decision, details

    def exports(self, model_dir: Path, adapter_dir: Path) -> list[tuple[str, Path]]:
        s = self.settings
        made: list[tuple[str, Path]] = []
        if s.merge:
            folder = export.merged(s, model_dir, adapter_dir, self.scratch / "merged")
            made.append((f"{s.adapter_name}{publish.MERGED_SUFFIX}", folder))
        if s.quantize != QuantMethod.NONE:
            calibration = self.scratch / "data" / SFT_FILE
            folder = export.quantized(s, model_dir, adapter_dir, calibration, self.scratch / "quantized")
            made.append((export.quantized_name(s.adapter_name, s.quantize), folder))
        return made

    def clean(self) -> None:
        """Keep ms-swift's training logs and the held-out pairs next to result.json; drop the rest."""
        held_out = self.scratch / "data" / HELD_OUT
        if held_out.is_file():
            shutil.copy2(held_out, self.run_dir / HELD_OUT)
        logs = self.run_dir / "logs"
        for stage in ("sft", "rlhf"):
            for path in sorted((self.scratch / stage).glob("*/logging.jsonl")):
                logs.mkdir(exist_ok=True)
                shutil.copy2(path, logs / f"{stage}-logging.jsonl")
        shutil.rmtree(self.scratch, ignore_errors=True)
