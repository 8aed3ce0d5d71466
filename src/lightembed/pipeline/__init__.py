"""Run an ordered chain of training stages from one YAML: hand-off, resume, and a run manifest.

``lightembed pipeline configs/pipelines/X.yaml [--output DIR] [--dry-run] [--restart STAGE]``

Pipeline file
=============
.. code-block:: yaml

    name: contrastive_minilm          # required; names the default output folder
    output_dir: null                  # default checkpoints/<name> (relative to the working directory)
    model: packaged:all-MiniLM-L6-v2  # required; input of the first stage: Hub id, local folder or packaged:<name>
    seed: 0                           # optional; passed to every stage as --seed_everything
    stages:                           # required, run in order; stage k+1 trains from stage k's export folder
      - name: cosent_stsb             # required, unique; letters, digits, '.', '_', '-'
        configs:                      # required; LightningCLI --config files, in order. Relative paths are looked
          - configs/trainer/cpu.yaml  #   up next to the pipeline file, then in the repository root (the nearest
          - configs/model/cosent_minilm.yaml  # ancestor of the pipeline file holding pyproject.toml or .git)
        args: ["--trainer.max_steps=200"]     # optional extra LightningCLI arguments, after the configs
        init_adapter_from_previous: false     # optional; true continues <prev>/adapter (encoder.lora.init_from)
    evaluate:                         # optional; STS of the final export folder, printed and put in the manifest
      sts: ["sts/stsb/test.jsonl"]    # [NAME=]SOURCE as for ``lightembed evaluate --sts``
      data_root: null                 # folder for relative sources (default $LIGHTEMBED_DATA)
      split: test                     # split read from Hub ids and per-split folders
      batch_size: 64
      instruction: null               # prefix for every sentence, excluded from pooling (instructed decoders)

Unknown keys and wrong types are errors that name the file and the key. A stage's ``args`` may not set what the
pipeline pins (input model, run folder, logger location, ``--ckpt_path``, and the seed when ``seed`` is given).

Folder layout
=============
::

    <output_dir>/manifest.json          one record per stage (below), rewritten atomically after every change
    <output_dir>/pipeline.lock          flock-ed by the run using the folder, pid and host inside (a second run is
                                        refused; the kernel releases the lock of a process that dies)
    <output_dir>/<stage>/               the stage's run folder = trainer.log_dir (logger save_dir/name/version pinned
                                        to <output_dir>, <stage> and ""): config.yaml, hparams.yaml, TensorBoard events
    <output_dir>/<stage>/checkpoints/   the checkpoints of the stage's own ModelCheckpoint (e.g. best-step=N.ckpt)
    <output_dir>/<stage>/resume/last.ckpt  written by :class:`~lightembed.callbacks.ResumeCheckpoint` at the end of
                                        every training epoch and when SIGTERM/SIGINT stops training (atomically:
                                        temporary file, fsync, rename); the one before it is ``previous.ckpt``
    <output_dir>/<stage>/export/        written by ``ExportCallback``: the next stage's ``model`` (a LoRA stage also
                                        writes ``export/adapter/``, used by ``init_adapter_from_previous``)

Every stage's trainer config needs a logger that takes ``save_dir``/``name``/``version`` (TensorBoardLogger or
CSVLogger, as in ``configs/trainer/cpu.yaml``) and ``lightembed.callbacks.ExportCallback``.

Manifest
========
``stages.<name>`` holds: ``status`` (``pending`` / ``running`` / ``interrupted`` / ``failed`` / ``done``),
``input_model``, ``output`` (export folder), ``export_files`` (sha256 of every file of the export), ``run_dir``,
``argv`` (the ``lightembed`` command of the stage), ``inputs`` (what the stage reads, by content: its config files
as parsed, args, seed, the sha256 of every file of its input model folder (or the Hub id and cached revision), and
the sha256 of every data file its parsed config names (or the Hub id and split)), ``fingerprint`` (hash of
``inputs``), ``resumed_from``, ``attempts``, ``error`` (when failed or interrupted),
``git_commit``, ``seed``, ``config_file`` and ``config`` (the config LightningCLI saved), ``data`` (sha256 of every
local file, or the Hub id, of the data module's source options listed in
:data:`lightembed.pipeline.manifest.DATA_SOURCE_OPTIONS`), ``steps`` (``trainer.global_step``), ``metrics``
(``trainer.callback_metrics`` at the end of fit, plus those of the test pass after it), ``wall_time_s`` (of the last
attempt), ``started_at``/``finished_at``. ``evaluation`` holds the final STS results. A stage is marked ``done``
only after its export folder is complete (``lightembed.json`` is written last), so a killed pipeline never shows a
stage as done that is not.

Resume
======
Rerunning the same command skips a ``done`` stage when every file of its export still has its recorded sha256,
its inputs are unchanged by content and no earlier stage ran again in this invocation. A ``done`` stage whose
inputs changed (new bytes at the same data path, other weights in the input folder, an edited config) starts over,
and so does every stage after it; the printed reason names what changed. A stage whose export lost or changed a
file resumes from its final checkpoint and only exports again. An unfinished stage with an unchanged fingerprint
continues from ``resume/last.ckpt`` (``--ckpt_path``); a checkpoint that does not load (truncated, corrupt) is
named, moved aside to ``last.ckpt.corrupt-<time>`` and ``previous.ckpt`` is tried, else the stage starts over. An
unfinished stage whose inputs changed is refused (resuming would mix old and new inputs), with a message naming the
changes: ``--restart STAGE`` starts it over. A stage started over has its old run folder moved aside to
``<stage>.stale-<time>`` (never deleted).

SIGTERM or SIGINT stops the running stage at the next batch boundary (Lightning's own SIGTERM handling;
:mod:`lightembed.interrupts` routes a first Ctrl-C there too), saves ``last.ckpt``, marks the stage
``interrupted`` and exits with 143 (SIGTERM) or 130 (SIGINT); a failed stage is marked ``failed`` and the command
exits non-zero.

Resume is exact from epoch-end checkpoints only (a checkpoint saved at a signal resumes mid-epoch, as Lightning
does: not bitwise equal to an uninterrupted run). ``last.ckpt`` is written at every epoch end (model, optimizer,
scheduler, loops, callbacks), the data order is fixed by the samplers' seed and epoch, and :class:`ResumeCheckpoint`
reseeds the RNGs at the first batch of every epoch from ``(seed, epoch, rank)``, so dropout does not depend on
whether the epoch followed a restart (with deterministic settings the final weights of a killed and resumed pipeline
equal an uninterrupted run's; tests/pipeline/test_runner.py checks it). A stage killed (``kill -9``) mid-epoch loses
that partial epoch (Lightning cannot replay the middle of an epoch of a plain DataLoader exactly), and a stage
shorter than one epoch has nothing to resume from: give long stages several shorter epochs (``limit_train_batches``
+ ``max_epochs``). DataLoader workers' own seeds are not reproduced, which matters only if a dataset or collator
draws random numbers.

Execution
=========
Stages run in this process, one after the other, through :func:`lightembed.fit.build_cli` (the same code path as
``lightembed fit``): simple, and metrics come straight from the trainer. Under DDP with Lightning's subprocess
launcher every rank re-runs the command and so walks the same stages; only global rank 0 holds the lock, writes
the manifest, moves folders and evaluates.

Modules
=======
:mod:`~lightembed.pipeline.spec` (the file's schema), :mod:`~lightembed.pipeline.manifest` (records and
fingerprints), :mod:`~lightembed.pipeline.lock` (one run per folder), :mod:`~lightembed.pipeline.runner` (the stage
loop), :mod:`~lightembed.pipeline.command` (the command line).
"""

from lightembed.callbacks.resume import ResumeCheckpoint, epoch_seed
from lightembed.pipeline.command import pipeline_main
from lightembed.pipeline.inputs import describe_changes, inputs_fingerprint, stage_inputs
from lightembed.pipeline.lock import LOCK_FILE, output_lock
from lightembed.pipeline.manifest import (
    DATA_SOURCE_OPTIONS,
    FORMAT_VERSION,
    MANIFEST_FILE,
    export_complete,
    export_problems,
    fingerprint_data,
    write_json_atomic,
)
from lightembed.pipeline.runner import ADAPTER_DIR, EXPORT_DIR, RESUME_DIR, run_pipeline, stage_argv
from lightembed.pipeline.spec import (
    EvaluateSpec,
    PipelineError,
    PipelineSpec,
    StageSpec,
    load_pipeline,
    repo_root,
)

__all__ = [
    "ADAPTER_DIR",
    "DATA_SOURCE_OPTIONS",
    "EXPORT_DIR",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "RESUME_DIR",
    "EvaluateSpec",
    "PipelineError",
    "PipelineSpec",
    "ResumeCheckpoint",
    "StageSpec",
    "epoch_seed",
    "describe_changes",
    "export_complete",
    "export_problems",
    "fingerprint_data",
    "inputs_fingerprint",
    "load_pipeline",
    "output_lock",
    "pipeline_main",
    "repo_root",
    "run_pipeline",
    "stage_argv",
    "stage_inputs",
    "write_json_atomic",
]
