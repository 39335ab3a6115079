"""The owner's policy as the dashboard's form shows it (a percentage, hours, megabytes) and back: each field is
checked on its own, so the page can say next to each one what is wrong and what it accepts."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidInput
from ..vehicle.policy import OwnerPolicy

__all__ = ["PolicyForm"]

MIB = 1024 * 1024


def _whole(text: str, low: int, high: int | None, what: str) -> tuple[int | None, str | None]:
    accepted = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"
    try:
        value = int(text.strip())
    except ValueError:
        return None, f"{what} {text.strip()!r} is not a number; accepted: {accepted}"
    if value < low or (high is not None and value > high):
        return None, f"{what} {value} is out of range; accepted: {accepted}"
    return value, None


@dataclass(slots=True)
class PolicyForm:
    opt_in: bool = True
    min_soc_percent: str = "20"
    plugged_in_only: bool = False
    hours_start: str = "0"
    hours_end: str = "24"
    cellular_cap_mib: str = "2048"
    allow_cellular: bool = True
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, policy: OwnerPolicy) -> PolicyForm:
        return cls(opt_in=policy.opt_in, min_soc_percent=f"{policy.min_soc * 100:g}",
                   plugged_in_only=policy.plugged_in_only, hours_start=str(policy.allowed_hours[0]),
                   hours_end=str(policy.allowed_hours[1]),
                   cellular_cap_mib=str(policy.monthly_cellular_cap_bytes // MIB), allow_cellular=policy.allow_cellular)

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> PolicyForm:
        """The submitted form; ``errors`` names each bad field (empty when :meth:`policy` will succeed)."""
        form = cls(opt_in="opt_in" in fields, min_soc_percent=fields.get("min_soc_percent", ""),
                   plugged_in_only="plugged_in_only" in fields, hours_start=fields.get("hours_start", ""),
                   hours_end=fields.get("hours_end", ""), cellular_cap_mib=fields.get("cellular_cap_mib", ""),
                   allow_cellular="allow_cellular" in fields)
        checks = {"min_soc_percent": (0, 100, "minimum charge (%)"), "hours_start": (0, 23, "start hour"),
                  "hours_end": (0, 24, "end hour"), "cellular_cap_mib": (0, None, "monthly cellular data cap (MiB)")}
        for name, (low, high, what) in checks.items():
            _, error = _whole(getattr(form, name), low, high, what)
            if error:
                form.errors[name] = error
        if not form.errors:
            try:
                form.policy()
            except InvalidInput as exc:  # the hours together: start == end is ambiguous
                form.errors["hours_end"] = ("start and end hour must differ (0 to 24 is all day; 22 to 7 wraps past "
                                            f"midnight): {exc.message}")
        return form

    def policy(self) -> OwnerPolicy:
        return OwnerPolicy(opt_in=self.opt_in, min_soc=int(self.min_soc_percent) / 100,
                           plugged_in_only=self.plugged_in_only,
                           allowed_hours=(int(self.hours_start), int(self.hours_end)),
                           monthly_cellular_cap_bytes=int(self.cellular_cap_mib) * MIB,
                           allow_cellular=self.allow_cellular)
