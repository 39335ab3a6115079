"""What the CLI shows: rich tables of jobs, the fleet, tenants and models, and progress bars that follow a job."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .client import FleetgridClient
    from .errors import TransportError
    from .models.spec import ModelSpec
    from .protocol import FleetOverview, JobStatus, PrivacyProgress, TenantSummary, TrainingProgress, VehicleSummary

__all__ = ["fleet_table", "job_table", "model_table", "tenant_table", "training_lines", "vehicle_table",
           "version_line", "watch_items", "watch_versions"]


def _progress(unit: str, console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), console=console, transient=False)


def watch_versions(client: FleetgridClient, job_id: str, rounds: int, console: Console) -> JobStatus:
    """A bar in global versions, and a line per new version as it lands (see :func:`version_line`)."""
    shown = 0
    with _progress("versions", console) as progress:
        task = progress.add_task(job_id, total=rounds)

        def update(s: JobStatus) -> None:
            nonlocal shown
            t = s.training
            if t is None:
                progress.update(task, description=f"{job_id} {s.state}")
                return
            for row in t.history[shown:]:
                progress.console.print(version_line(row, t), highlight=False, soft_wrap=True)
            shown = len(t.history)
            progress.update(task, total=t.target_versions, completed=t.version,
                            description=f"{job_id} {s.state}, round {t.round}")

        return client.wait(job_id, on_update=update, poll_s=1.0, on_retry=_retrying_in(progress, task, job_id))


def version_line(row: dict[str, Any], t: TrainingProgress) -> str:
    """One global version in a line: its held-out accuracy and loss, the updates folded in and how many cars
    sent them (and how many were cut short by a preemption), and the job's bytes up and down when it was seen."""
    version = row.get("version", "?")
    head = f"version {version}/{t.target_versions}:"
    metrics = f"accuracy {_number(row.get('accuracy'))}  loss {_number(row.get('loss'))}"
    if version == 0:
        return f"{head} {metrics}  (the initial model)"
    updates = _count(row.get("used", row.get("reports", 0)), "update")
    if "cars" in row:  # versions made before cars were counted say only how many updates
        updates = f"{_count(row['cars'], 'car')}, {updates}"
    if row.get("partial"):
        updates += f" ({row['partial']} partial)"
    if "secagg_asked" in row:  # a secure round: only the sum was seen; who of the cohort was lost on the way
        updates += f" (secure: {row['secagg_dropped']} of {row['secagg_asked']} dropped)"
    return f"{head} {metrics}  {updates}  up {_bytes(t.bytes_up)} down {_bytes(t.bytes_down)} so far"


def training_lines(job: JobStatus) -> list[str]:
    """A training job's latest version (as :func:`version_line` shows it) and what its preemptions were."""
    t = job.training
    if t is None or not t.history:
        return []
    lines = [version_line(t.history[-1], t),
             f"preemptions: {job.preemptions} ({_count(t.partial_updates, 'partial update')} in the versions so far, "
             f"{_count(t.handbacks, 'share')} handed back)"]
    if t.privacy is not None:
        lines.append(privacy_line(t.privacy))
    if t.secure_aggregation:
        dropped = sum(int(row.get("secagg_dropped") or 0) for row in t.history)
        lines.append(f"secure aggregation: on (the coordinator sees only each round's sum); {_count(dropped, 'car')} "
                     "dropped mid-round in the versions so far")
    return lines


def privacy_line(p: PrivacyProgress) -> str:
    """A private job's privacy in a line: (epsilon, delta) spent, the budget, and the mechanism's sigma and clip."""
    eps = "unbounded" if p.epsilon is None else f"{p.epsilon:.3g}"
    budget = f" of budget {p.epsilon_budget:g}" if p.epsilon_budget is not None else ""
    sigma = "-" if p.noise_multiplier is None else f"{p.noise_multiplier:.3g}"
    stopped = "  (stopped: budget spent)" if p.stopped_on_budget else ""
    return (f"privacy ({p.mode} DP, per car): epsilon {eps}{budget} at delta {p.delta:g}  sigma {sigma}  "
            f"clip {p.clip:g}  q {p.sampling_rate:.3g}  {p.accountant}{stopped}")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def watch_items(client: FleetgridClient, job_id: str, console: Console) -> JobStatus:
    """A bar in items. The API counts finished units, so items done are shown in proportion until the job is done
    (units hold equal numbers of items but the last)."""
    with _progress("items", console) as progress:
        task = progress.add_task(job_id, total=None)

        def update(s: JobStatus) -> None:
            done = s.items if s.state == "done" else s.items * s.units_done // max(s.units_total, 1)
            reissued = f", {s.reissued_units} re-issued" if s.reissued_units else ""
            progress.update(task, total=s.items, completed=done,
                            description=f"{job_id} {s.state}, units {s.units_done}/{s.units_total}{reissued}")

        return client.wait(job_id, on_update=update, on_retry=_retrying_in(progress, task, job_id))


def _retrying_in(progress: Progress, task: TaskID, job_id: str) -> Callable[[TransportError, float], None]:
    def show(_exc: TransportError, wait_s: float) -> None:
        progress.update(task, description=f"{job_id}: coordinator unreachable, trying again in {wait_s:.0f} s")

    return show


def job_table(jobs: list[JobStatus]) -> Table:
    table = Table()
    table.add_column("job", no_wrap=True, min_width=16)  # ids are what every other command takes: never cut
    for header in ("name", "model", "state"):
        table.add_column(header, overflow="fold")  # a narrow terminal folds words rather than cut them
    for header in ("items", "units", "in flight", "re-issued", "preempted"):
        table.add_column(header, justify="right", overflow="fold")
    for j in jobs:
        # The coordinator names an unnamed job after its id; a second copy of the id says nothing.
        name = j.name if j.name and j.name != j.job_id else "-"
        table.add_row(j.job_id, name, j.model, j.state, str(j.items), f"{j.units_done}/{j.units_total}",
                      str(j.units_in_flight), str(j.reissued_units), str(j.preemptions))
    return table


def fleet_table(o: FleetOverview) -> Table:
    table = Table("fleet", "now")
    table.columns[1].justify = "right"
    rows = [("vehicles", o.vehicles), ("  online", o.online), ("  eligible now", o.eligible_now)]
    rows += [(f"  {state}", n) for state, n in sorted(o.by_state.items())]
    rows += [("leases in flight", o.leases_in_flight), ("units pending", o.units_pending)]
    rows += [(f"jobs {state}", n) for state, n in sorted(o.jobs.items())]
    for what, n in rows:
        table.add_row(what, str(n))
    return table


def vehicle_table(vehicles: list[VehicleSummary]) -> Table:
    table = Table()
    table.add_column("vehicle", no_wrap=True, min_width=15)  # the id an operator acts on: never cut
    for header in ("name", "hw", "drive", "soc", "network", "eligible", "leases"):
        table.add_column(header, overflow="fold")
    for v in vehicles:
        table.add_row(v.vehicle_id, v.name, v.hardware, v.drive or "-", f"{v.soc:.2f}" if v.soc is not None else "-",
                      v.network or "-", "revoked" if v.revoked else "yes" if v.eligible else "no",
                      str(v.active_leases))
    return table


def model_table(specs: list[ModelSpec]) -> Table:
    """Each model's inputs as a user gives them, and what one item comes back as."""
    table = Table("name", "inputs", "output per item", "description")
    for m in specs:
        if m.input_kind == "text":
            inputs = "text (one string per JSON line)"
        else:
            shape = ", ".join(map(str, m.item_shape)) if m.item_shape else "..."
            inputs = f"{m.input_dtype or 'float32'} array (N, {shape}), .npy"
            inputs += "" if m.item_shape else ", as your --model-file takes"
        output = str(m.output_shape) if m.output_shape else "as your --model-file gives"
        table.add_row(m.name, inputs, output, m.description)
    return table


def tenant_table(tenants: list[TenantSummary]) -> Table:
    table = Table("tenant", "created", "token")
    for t in tenants:
        table.add_row(t.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created_at)),
                      "revoked" if t.revoked else "valid")
    return table
