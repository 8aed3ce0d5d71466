"""Run an ordered chain of training stages from one YAML (or several chains, ``arms``, sharing equal stages):
hand-off, resume, and a run manifest.

``lightembed pipeline configs/pipelines/X.yaml [--output DIR] [--dry-run] [--restart STAGE]``

Pipeline file
=============
.. code-block:: yaml

    name: contrastive_minilm          # required; names the default output folder
    output_dir: null                  # default checkpoints/<name> (relative to the working directory)
    model: packaged:all-MiniLM-L6-v2  # required; input of the first stage: Hub id, local folder or packaged:<name>
    seed: 0                           # optional; passed to every stage as --seed_everything
    stages:                           # required, run in order; stage k+1 trains from stage k's export folder
                                      #   (with `arms`: the pool of stages the arms name, see "Arms" below)
      - name: cosent_stsb             # required, unique; letters, digits, '.', '_', '-'
        configs:                      # required; LightningCLI --config files, in order. Relative paths are looked
          - configs/trainer/cpu.yaml  #   up next to the pipeline file, then in the repository root (the nearest
          - configs/model/cosent_minilm.yaml  # ancestor of the pipeline file holding pyproject.toml or .git)
        args: ["--trainer.max_steps=200"]     # optional extra LightningCLI arguments, after the configs
        init_adapter_from_previous: false     # optional; true continues <prev>/adapter (encoder.lora.init_from)
    arms: null                        # optional; {arm: [stage, ...]}, see "Arms" below
    evaluate:                         # optional; STS of the final export folder (of each arm's, with arms)
      sts: ["sts/stsb/test.jsonl"]    # [NAME=]SOURCE as for ``lightembed evaluate --sts``
      data_root: null                 # folder for relative sources (default $LIGHTEMBED_DATA)
      split: test                     # split read from Hub ids and per-split folders
      batch_size: 64
      instruction: null               # prefix for every sentence, excluded from pooling (instructed decoders)

Unknown keys and wrong types are errors that name the file and the key (a key given twice in one mapping too). A
stage's ``args`` may not set what the pipeline pins (input model, run folder, logger location, ``--ckpt_path``, and
the seed when ``seed`` is given).

Arms (ablations)
----------------
With an ``arms`` key, ``stages`` is a pool of named stages and each arm is a chain of them, run in order from
``model`` (one arm per starting point of an ablation):

.. code-block:: yaml

    stages: [{name: mntp, ...}, {name: simcse, ...}, {name: supervised, ...}]
    arms:                             # arm name (a folder name) -> the pool stages it runs, in order
      bidirectional: [supervised]
      mntp: [mntp, supervised]
      mntp_simcse: [mntp, simcse, supervised]

An arm that is empty, names an unknown stage, runs a stage twice or runs the same chain as another arm is an
error, and so is a pool stage in no arm or an arm whose first stage sets ``init_adapter_from_previous``. Arms run
in the order written, each as the linear pipeline above in ``<output_dir>/arms/<arm>/``. A stage whose fingerprint
(the ``inputs`` below: configs as parsed, args, seed, input model files, data) equals that of a ``done`` stage of an
earlier arm is the same computation and is not trained again: the arm's record takes over the earlier one's, with
``reused_from`` (``{arm, stage, run_dir}``) and ``output`` pointing at that export, which is referenced, never
copied or linked. In the example, the mntp_simcse arm reuses the mntp arm's MNTP export. ``--restart STAGE`` starts
the pool stage over in every arm that trains it (a later arm reuses an export trained again in the same run). With
``evaluate``, each arm is scored after it finishes, twice: its final export (``final``) and the input of its last
stage embedded as that stage embeds it (``last_stage_input``: the pooling, ``max_length``, ``bidirectional`` and
``layers`` of the stage's encoder config, applied to the model the stage started from; for an arm of one stage,
the pipeline's model). A score is kept while the model's files, those settings and the ``evaluate`` block are
unchanged.

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

With ``arms``, ``<output_dir>/manifest.json`` holds one entry per arm (below) and every arm has the layout above
in ``<output_dir>/arms/<arm>/`` (its own ``manifest.json`` and one run folder per stage it trained itself; a reused
stage has no folder there). The lock stays ``<output_dir>/pipeline.lock``, one for all arms.

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

In an arms pipeline, ``arms.<arm>`` holds ``chain``, ``run_dir``, ``status``, ``stages`` (per stage: ``status``,
``output``, ``wall_time_s``, ``reused_from``), ``seconds`` = ``seconds_trained`` (wall time of the stages the arm
trained itself) + ``seconds_reused`` (recorded wall time of the stages it reused, named in ``reused`` as
``{stage: "arm/stage"}``), so arms compare at equal cost, and ``evaluation`` (``final`` and ``last_stage_input``,
each with ``model``, ``settings``, ``sts`` and a ``fingerprint``).

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
loop), :mod:`~lightembed.pipeline.arms` (arms: shared stages, per-arm scores), :mod:`~lightembed.pipeline.command`
(the command line).
"""

from lightembed.callbacks.resume import ResumeCheckpoint, epoch_seed
from lightembed.pipeline.arms import ENCODER_OPTIONS, SharedStages, stage_encoder_settings
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
    ARMS_DIR,
    ArmSpec,
    EvaluateSpec,
    PipelineError,
    PipelineSpec,
    StageSpec,
    arm_pipeline,
    load_pipeline,
    repo_root,
)

__all__ = [
    "ADAPTER_DIR",
    "ARMS_DIR",
    "DATA_SOURCE_OPTIONS",
    "ENCODER_OPTIONS",
    "EXPORT_DIR",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "RESUME_DIR",
    "ArmSpec",
    "EvaluateSpec",
    "PipelineError",
    "PipelineSpec",
    "ResumeCheckpoint",
    "SharedStages",
    "StageSpec",
    "arm_pipeline",
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
    "stage_encoder_settings",
    "stage_inputs",
    "write_json_atomic",
]
