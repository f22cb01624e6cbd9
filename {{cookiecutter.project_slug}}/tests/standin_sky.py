"""A stand-in `sky` for tests/test_spot_fallback.py: managed jobs without a cloud.

`sky jobs queue -o json` prints records in SkyPilot's own format: the fixture has SkyPilot
(.venv-sky) dump one `ManagedJobRecord` as the real command dumps it, and the list of its
`ManagedJobStatus` values, into STANDIN_SKY_FORMAT; every record printed here is that record
with this job's values, and every scripted status must be one of SkyPilot's. (Importing
SkyPilot takes seconds; this runs at every poll.) What happens to each job is scripted in
the state file (STANDIN_SKY_STATE):

    {"scripts": {"spot": [["STARTING", 0, 0], ["RUNNING", 0, 60], ["RECOVERING", 1, 60], ...],
                 "ondemand": [...]},
     "jobs": [], "calls": []}

`jobs launch` adds a job that follows the "ondemand" script with --no-use-spot, else "spot";
each `jobs queue` moves every job one step on (the last step stays); `jobs cancel -n NAME`
sends a job through CANCELLING to CANCELLED. Every call's arguments are recorded in "calls".
"""

import json
import os
import sys
import time
from pathlib import Path

skypilot = json.loads(Path(os.environ["STANDIN_SKY_FORMAT"]).read_text())
state_file = Path(os.environ["STANDIN_SKY_STATE"])
state = json.loads(state_file.read_text())
argv = sys.argv[1:]
state["calls"].append(argv)


def value_after(flag: str) -> str:
    return argv[argv.index(flag) + 1]


if argv[:2] == ["jobs", "launch"]:
    kind = "ondemand" if "--no-use-spot" in argv else "spot"
    job_id = len(state["jobs"]) + 1
    state["jobs"].append({"job_id": job_id, "name": value_after("-n"), "script": state["scripts"][kind], "at": -1,
                          "submitted_at": time.time()})
    print(f"Managed job ID: {job_id}")
elif argv[:2] == ["jobs", "cancel"]:
    for job in state["jobs"]:
        if job["name"] == value_after("-n") and job["script"][job["at"]][0] not in ("SUCCEEDED", "CANCELLED"):
            recoveries, duration = job["script"][job["at"]][1:]
            job["script"], job["at"] = [["CANCELLING", recoveries, duration], ["CANCELLED", recoveries, duration]], -1
    print("Cancelling managed jobs...")
elif argv[:3] == ["jobs", "queue", "-o"] and value_after("-o") == "json":
    records = []
    for job in state["jobs"]:
        job["at"] = min(job["at"] + 1, len(job["script"]) - 1)
        status, recoveries, duration = job["script"][job["at"]]
        if status not in skypilot["statuses"]:
            sys.exit(f"stand-in sky: {status!r} is not one of SkyPilot's job statuses {skypilot['statuses']}")
        record = dict(skypilot["record"], job_id=job["job_id"], job_name=job["name"], task_name=job["name"], status=status,
                      recovery_count=recoveries, job_duration=duration, submitted_at=job["submitted_at"])
        records.append(record)
    print(json.dumps(records, indent=2))
else:
    print(f"stand-in sky: {' '.join(argv)} is not scripted", file=sys.stderr)
    sys.exit(2)
state_file.write_text(json.dumps(state))
