"""A fake SLURM / PBS for tests: runs each submitted job script as a local background process.

Called by the wrappers beside it (``sbatch``, ``squeue``, ``scancel``, ``qsub``, ``qstat``,
``qdel``) as ``fake.py COMMAND ARGS...``.  State lives in ``$FAKE_SCHEDULER_DIR``: per job a copy
of the script (``<id>.sh``), its output (``<id>.out``) and the PID of its process group
(``<id>.pid``).  ``$FAKE_SCHEDULER_MODE`` changes what a submission does: ``run`` (default)
starts the job, ``reject`` exits 1 the way a batch system refuses a job, ``hold`` prints a job id
but starts nothing (a job that stays queued).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def state_dir() -> Path:
    path = Path(os.environ.get("FAKE_SCHEDULER_DIR", "/tmp/fake-scheduler"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def next_id(state: Path) -> int:
    counter = state / "counter"
    value = int(counter.read_text()) + 1 if counter.exists() else 1001
    counter.write_text(str(value))
    return value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def job_state(state: Path, job: str) -> str | None:
    pid_file = state / f"{job}.pid"
    if not (state / f"{job}.sh").exists():
        return None
    if not pid_file.exists():
        return "PENDING" if not (state / f"{job}.done").exists() else "COMPLETED"
    return "RUNNING" if alive(int(pid_file.read_text())) else "COMPLETED"


def submit(args: list[str], flavour: str) -> int:
    mode = os.environ.get("FAKE_SCHEDULER_MODE", "run")
    script = Path(args[-1])
    if mode == "reject":
        if flavour == "slurm":
            print(
                "sbatch: error: Batch job submission failed: Invalid account or "
                "account/partition combination specified",
                file=sys.stderr,
            )
        else:
            print("qsub: Unknown queue", file=sys.stderr)
        return 1
    state = state_dir()
    job = next_id(state)
    copy = state / f"{job}.sh"
    copy.write_text(script.read_text())  # the caller deletes its script after submitting
    (state / f"{job}.args").write_text("\n".join(args))
    if mode != "hold":
        env = dict(os.environ)
        env.update({"SLURM_JOB_ID": str(job)} if flavour == "slurm" else {"PBS_JOBID": str(job)})
        with open(state / f"{job}.out", "wb") as out:
            proc = subprocess.Popen(
                ["bash", str(copy)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=os.getcwd(),
            )
        (state / f"{job}.pid").write_text(str(proc.pid))
    if flavour == "slurm":
        print(f"Submitted batch job {job}")
    else:
        print(f"{job}.fake-pbs-server")
    return 0


def status(args: list[str], flavour: str) -> int:
    state = state_dir()
    wanted = [a.split(".")[0] for a in args if a[:1].isdigit()]
    if "-j" in args:
        wanted += args[args.index("-j") + 1].split(",")
    jobs = wanted or sorted(p.stem for p in state.glob("*.sh"))
    rows = []
    for job in jobs:
        got = job_state(state, job)
        if got is None:
            if wanted and flavour == "pbs":
                print(f"qstat: Unknown Job Id {job}", file=sys.stderr)
                return 153
            continue
        if flavour == "slurm":
            rows.append(f"{job:>8} {got}")
        else:
            code = {"PENDING": "Q", "RUNNING": "R", "COMPLETED": "F"}[got]
            rows.append(
                f"{job + '.fake-pbs-server':<24} dask-worker  {os.environ.get('USER', 'u')}"
                f"  00:00:00 {code} batch"
            )
    print("   JOBID STATE" if flavour == "slurm" else "Job id  Name  User  Time Use S Queue")
    print("\n".join(rows))
    return 0


def cancel(args: list[str], flavour: str) -> int:
    state = state_dir()
    code = 0
    for job in (a.split(".")[0] for a in args if a[:1].isdigit()):
        if not (state / f"{job}.sh").exists():
            print(
                f"{'scancel' if flavour == 'slurm' else 'qdel'}: error: Invalid job id {job}",
                file=sys.stderr,
            )
            code = 1
            continue
        pid_file = state / f"{job}.pid"
        (state / f"{job}.done").write_text("cancelled")
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.05)
            if not alive(pid):
                break
        pid_file.unlink(missing_ok=True)
    return code


COMMANDS = {
    "sbatch": (submit, "slurm"),
    "squeue": (status, "slurm"),
    "scancel": (cancel, "slurm"),
    "qsub": (submit, "pbs"),
    "qstat": (status, "pbs"),
    "qdel": (cancel, "pbs"),
}

if __name__ == "__main__":
    func, flavour = COMMANDS[sys.argv[1]]
    sys.exit(func(sys.argv[2:], flavour))
