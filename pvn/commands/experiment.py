"""``pvn experiment CONFIG.yaml``: games x seeds x arms, each stage run once, resumable.

An experiment is a list of stages, each one ``pvn`` command with its own run directory:

1. ``data/<game>``: the log to pretrain on -- a learning agent's training run logged with
   ``replay_log=`` (``data.kind: agent``; e.g. ``eval_preset=dopamine_dqn``) or ``pvn collect``
   (``data.kind: collect``); with ``data.kind: dataset`` the logs already exist, one DQN Replay
   directory per game under ``data.path`` (the official dataset, another experiment's logs),
   and there is no data stage;
2. ``pretrain/<game>``: a PVN pretrained on that log; an arm with its own ``pretrain:``
   overrides (a knob: more tasks, another firing rate, longer) gets its own,
   ``pretrain/<game>-<arm>``, the experiment's overrides followed by the arm's; a pretraining
   arm (``control: false``: a study of the pretraining itself) gets one per seed,
   ``pretrain/<game>-<arm>/seed<k>``, and no evaluation;
3. ``eval/<game>/<arm>/seed<k>``: each arm (``encoder: pvn`` -- the game's pretrained PVN --,
   ``random`` or ``e2e``, with its own overrides) at each seed (the experiment's ``seeds``, or
   the arm's own ``seeds:``, e.g. one seed of a costly end-to-end arm);
4. ``report``: ``pvn report`` over every evaluation, each run labelled by its arm (and offline
   probes per game), the per-run CSV, the pretraining arms measured on held-out log
   checkpoints (``measure:``; :mod:`pvn.experiments.measures`) and the config, under
   ``results``.

Several runners may share ``out``: runners of one experiment (one per core or machine), or of
experiments that share stages (a knob study reusing another experiment's logs, PVN and baseline
runs: a stage is the same run wherever its command is the same). Each stage is locked while it
runs (:func:`claim`), so the runners split the stages between them and never run one twice at
once; a runner with nothing left to start waits for the others' stages it still needs. A runner
notes each stage's command in its run dir (``stage.json``) and refuses an ``out`` whose stage
was made by another command (:func:`check_commands`): same name, other settings.

A stage whose output is complete is skipped; one that was killed is re-run with the same command,
and every ``pvn`` command resumes from its own checkpoints, so the experiment continues across
interruptions and machines. Each finished stage also leaves its record (and a PVN its torso)
under ``results/kept/``, and a stage whose run in ``out`` is gone is restored from it
(:mod:`pvn.experiments.kept`): losing ``out`` costs only the stages that were running. A failed
stage stops the runner with one line naming the stage and its command. ``--print-commands``
prints the commands instead (one per line, in order, each followed by a shell comment naming
its stage and the stages it needs), to run elsewhere;
``--status`` prints which stages are done and left; ``--report`` writes the report over the
evaluations finished so far (``stages.txt`` beside it says which), marking the report stage done
only once every evaluation is.

On a cluster (``launcher.kind: slurm``, or ``launcher=slurm`` on the command line) the command
submits every stage that is not done, queued or running as a SLURM job through submitit, with
the stage graph as job dependencies and each stage kind's resources from ``launcher.resources``,
and returns (``--wait``: follows the jobs until they end); re-run it after jobs were cancelled,
failed or timed out and it submits what is missing; ``--status`` adds SLURM's state of each
stage's job and its log file (:mod:`pvn.experiments.cluster`, docs/cluster.md).
``launcher.kind: submitit_local`` runs the stages one by one through submitit's local executor.
``key=value`` arguments override the config (``launcher.resources.pretrain.gpus=1``).

The pieces (:mod:`pvn.experiments`): the plan (config and stage graph), the store of ``out``
(done markers, commands, times, locks) and the launcher that runs the stages (local: here, as
subprocesses; submitit: as jobs).
"""

from __future__ import annotations

from pathlib import Path

from pvn.experiments.cluster import SubmititLauncher, job_states, parse_launcher
from pvn.experiments.kept import restorable, restore
from pvn.experiments.launchers import LocalLauncher
from pvn.experiments.plan import load, stages
from pvn.experiments.store import Store
from pvn.experiments.summary import status_table, write_report


def run(
    config_path: str | Path,
    print_commands: bool = False,
    status: bool = False,
    report_now: bool = False,
    overrides: list[str] | None = None,
    wait: bool = False,
) -> int:
    cfg = load(config_path, overrides)
    spec = parse_launcher(cfg.get("launcher"), str(config_path))
    todo = stages(cfg, config_path, overrides)
    store = Store(cfg["out"], cfg["name"])
    if print_commands:  # printed as they are, to run anywhere; nothing is checked or run
        for s in todo:
            needs = f", after {' '.join(s.after)}" if s.after else ""
            print(f"{s.command()}  # {s.name}{needs}")
        return 0
    store.check_commands(todo)
    if not status:  # finished stages whose runs in out are gone, from their kept records
        restore(todo, store)
    if report_now:
        write_report(cfg, todo, Path(config_path))
    elif not status:
        launcher = LocalLauncher() if spec.kind == "local" else SubmititLauncher(spec, wait)
        launcher.launch(todo, store)
    jobs = job_states(todo, store) if spec.kind == "slurm" else None
    kept = {s.name for s in restorable(todo)} if status else None  # a runner restores them
    print(status_table(todo, store, jobs, kept=kept))
    return 0
