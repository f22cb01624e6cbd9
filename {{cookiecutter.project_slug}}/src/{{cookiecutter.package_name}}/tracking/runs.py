"""Finding runs in MLflow: a branch's newest finished run (the baseline), a pull request's runs.

Both are one `search_runs` query each, so they stay fast with thousands of runs.
"""

from __future__ import annotations


def select_runs(client, experiment: str, pr: str | None = None, branch: str | None = None, last: int = 10,
                run_ids: list[str] | None = None) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    if run_ids:
        return [client.get_run(run_id) for run_id in run_ids]
    filters = []
    if pr:
        filters.append(f"tags.pr = '{int(pr)}'")
    if branch:
        filters.append("tags.git_branch = '{}'".format(branch.replace("'", "")))
    return list(client.search_runs([exp.experiment_id], " and ".join(filters), max_results=last, order_by=["attributes.start_time DESC"]))


def find_baseline(client, experiment: str, branch: str = "main", exclude: str | None = None):
    """The newest finished run of `branch` that has an eval_loss (other than run `exclude`)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    branch = branch.replace("'", "")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.git_branch = '{branch}' and attributes.status = 'FINISHED' and metrics.eval_loss > -1",
        max_results=2, order_by=["attributes.start_time DESC"],
    )
    runs = [run for run in runs if run.info.run_id != exclude]
    return runs[0] if runs else None
