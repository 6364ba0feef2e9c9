# Parameters and the stage table, shared by every rule.
import json
import os
import sys
from pathlib import Path

from posttrain import dag
from posttrain.config import ConfigError, load_params


def _param_files():
    """params.yaml plus each --configfile overlay, as paths relative to the working directory
    when they lie inside it (so commands stay the same on every machine)."""
    files = ["params.yaml"]
    for f in workflow.overwrite_configfiles:
        f = Path(f)
        # relative when inside the working directory, through links too (a rehearsal's work tree
        # links recipes/ to the project's)
        for path, cwd in ((Path(os.path.abspath(f)), Path.cwd()), (f.resolve(), Path.cwd().resolve())):
            if path.is_relative_to(cwd):
                f = path.relative_to(cwd)
                break
        if str(f) not in files:
            files.append(str(f))
    return files


# Rules run `posttrain` from the environment Snakemake itself runs in, activated or not.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

PARAM_FILES = _param_files()
try:
    PARAMS = load_params(PARAM_FILES)
except ConfigError as err:
    # Fail at parse time, before any job is scheduled, naming the key.
    sys.stderr.write(f"posttrain: {err}\n")
    raise SystemExit(1)

STAGES = dag.stages(PARAMS, PARAM_FILES)
# The experiment tracker (params' tracking:) reaches every rule through the environment: it is no
# stage's parameter, so setting it in an overlay changes no command and reruns nothing.
os.environ["POSTTRAIN_TRACKING"] = PARAMS.tracking.model_dump_json()
TARGETS = dag.final_targets(STAGES)


def section_json(stage):
    """The parameter sections a stage reads: a change reruns it (Snakemake's params trigger)."""
    dumped = PARAMS.model_dump(mode="json")
    return json.dumps({s: dumped[s] for s in stage.params}, sort_keys=True)


# Under SLURM, `--signal=USR1@N` reaches every process of a job step: this Snakemake (which
# runs the rule) as well as the trainer. Python's default action for SIGUSR1 is to exit, which
# would end the job step before the trainer has saved its checkpoint; ignoring it here leaves
# the trainer (which handles it, see posttrain.core.preemption) to save, exit, and be retried.
if "SLURM_JOB_ID" in os.environ:
    import signal

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
