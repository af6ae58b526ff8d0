"""Fair share: users' decayed device-seconds and Slurm's classic fair-share factor.

Used by the `fairshare` policy and by `priority` with `fairshare=W`.

The factor (Slurm's classic fair-share factor, https://slurm.schedmd.com/classic_fair_share.html):

    F = 2 ** (-U / S)

U is the user's normalised usage: its decayed device-seconds over everyone's;
S its normalised share: its share over the shares of its siblings. F is 1 for
a user who used nothing, 1/2 for one whose usage is exactly its share, and
tends to 0 the further a user is over its share. Usage decays with a
half-life: device-seconds received `half_life` seconds ago count half.

Groups (Slurm's accounts) form a two-level tree: the root's children are the
groups and the users who belong to none; a group's children are its users. A
user in group g has the effective share S_u = S_g x share_u / (shares of g's
users), and its factor is the geometric mean of the group's and its own:

    F = sqrt(2 ** (-U_g / S_g) x 2 ** (-U_u / S_u)) = 2 ** (-(U_g / S_g + U_u / S_u) / 2)

with U_g the group's usage over everyone's. Why the geometric mean of the two
factors rather than their product: a user who belongs to no group is its own
group (U_g = U_u, S_g = S_u), so without groups F is exactly the flat factor
above; F is 1/2 at exactly the configured share at both levels; and the
factors of all users are equal exactly when every group and every user
receives its configured share, so ordering by F drives usage toward the
configured split at both levels (the plain product would favour users in
groups over users who are their own group).

Shares are normalised over every user the policy knows of: those named in
`shares` or `groups`, those with jobs in this round, and those with recorded
usage. Only the ratios of the factors order jobs, so users with no jobs only
scale everyone's factor.

Where usage comes from: the ledger keeps, as state inside the policy object,
each user's decayed device-seconds, and advances it every round from the
views it is given. A JobView's `attained_service` is the job's device-seconds
so far, so the difference from the last round is exactly what the job
received in between; a job that has left since (finished or cancelled) is
charged the devices the last decision gave it over the elapsed time (exact
in the simulator, where a round follows every completion). This is state
because JobView fields alone cannot give it: the jobs of a user that have
ended are no longer shown, yet their usage must still count (and decay).
The state is a function of the sequence of rounds only (times and views), so
the policy stays deterministic: the simulator and the live service call
schedule() every round with the same objects and get the same decisions, and
calling schedule() again for the same instant and views changes nothing.
A restarted service starts from an empty ledger; the attained service of the
jobs still active is charged again at their first round (undecayed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from corral.errors import UserError
from corral.sched.types import Decision, JobView

DEFAULT_SHARE = 1.0  # a user (or group) without a configured share
DEFAULT_HALF_LIFE = 7 * 86400.0  # Slurm's PriorityDecayHalfLife default: 7 days


@dataclass(frozen=True)
class ShareTree:
    """Configured shares: user -> share, user -> group, group -> share (all checked)."""

    shares: Mapping[str, float]
    groups: Mapping[str, str]
    group_shares: Mapping[str, float]

    @classmethod
    def of(
        cls,
        policy: str,
        shares: Mapping[str, float] | None,
        groups: Mapping[str, str] | None,
        group_shares: Mapping[str, float] | None,
    ) -> ShareTree:
        """The tree from a policy's options; UserError names the option and entry that is wrong."""
        user_shares = _positive_map(policy, "shares", shares)
        members = _str_map(policy, "groups", groups)
        by_group = _positive_map(policy, "group_shares", group_shares)
        unknown = sorted(set(by_group) - set(members.values()))
        if unknown:
            raise UserError(
                f"{policy} group_shares names {', '.join(map(repr, unknown))}, a group no user belongs to"
                " (groups maps users to groups)"
            )
        return cls(user_shares, members, by_group)

    def share(self, user: str) -> float:
        """The configured share of `user`."""
        return self.shares.get(user, DEFAULT_SHARE)

    def group_share(self, group: str) -> float:
        """The configured share of `group`."""
        return self.group_shares.get(group, DEFAULT_SHARE)


def _positive_map(policy: str, option: str, value: Mapping[str, float] | None) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{policy} {option} must map names to shares, got {value!r}")
    out = {}
    for name, share in value.items():
        if not isinstance(name, str) or isinstance(share, bool) or not isinstance(share, int | float):
            raise UserError(f"{policy} {option}: expected name -> number, got {name!r}: {share!r}")
        if not (math.isfinite(share) and share > 0):
            raise UserError(f"{policy} {option}[{name!r}] must be a finite number > 0, got {share!r}")
        out[name] = float(share)
    return out


def _str_map(policy: str, option: str, value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UserError(f"{policy} {option} must map user names to group names, got {value!r}")
    return dict(value)


def half_life_option(policy: str, half_life: object) -> float:
    """The `half_life` option, checked: seconds > 0 (math.inf: usage never decays)."""
    if isinstance(half_life, bool) or not isinstance(half_life, int | float) or not half_life > 0:
        raise UserError(f"{policy} half_life must be a number of seconds > 0 (inf: no decay), got {half_life!r}")
    return float(half_life)


def fairshare_factors(usage: Mapping[str, float], users: Iterable[str], tree: ShareTree) -> dict[str, float]:
    """User -> fair-share factor in (0, 1] for `users` (and every user in `usage` or `tree`), see the module doc."""
    known = dict.fromkeys([*tree.shares, *tree.groups, *usage, *users])
    total = sum(usage.values())
    # The root's children: ("g", group) or ("u", user) for a user in no group.
    node_of = {u: ("g", tree.groups[u]) if u in tree.groups else ("u", u) for u in known}
    top: dict[tuple[str, str], float] = {("g", g): tree.group_share(g) for g in tree.groups.values()}
    node_usage: dict[tuple[str, str], float] = dict.fromkeys(top, 0.0)
    for u, node in node_of.items():
        if node[0] == "u":
            top[node] = tree.share(u)
        node_usage[node] = node_usage.get(node, 0.0) + usage.get(u, 0.0)
    top_sum = sum(top.values())
    in_group: dict[str, float] = {}  # group -> sum of its users' shares
    for u, (kind, name) in node_of.items():
        if kind == "g":
            in_group[name] = in_group.get(name, 0.0) + tree.share(u)
    factors = {}
    for u, node in node_of.items():
        s_node = top[node] / top_sum
        if total <= 0:
            factors[u] = 1.0
            continue
        u_node = node_usage[node] / total
        if node[0] == "u":
            factors[u] = 2.0 ** (-u_node / s_node)
        else:
            s_user = s_node * tree.share(u) / in_group[node[1]]
            factors[u] = 2.0 ** (-(u_node / s_node + usage.get(u, 0.0) / total / s_user) / 2.0)
    return factors


@dataclass(slots=True)
class _Charged:
    """What the ledger charged one job so far, and the devices it holds until the next round."""

    user: str
    attained: float
    devices: int


class UsageLedger:
    """Each user's decayed device-seconds, advanced from the views of every round (see the module doc).

    >>> from corral.sched.types import JobView
    >>> ledger = UsageLedger(half_life=3600.0)
    >>> ledger.observe(0.0, [JobView("a", user="ann", attained_service=800.0)])
    >>> ledger.observe(3600.0, [JobView("a", user="ann", attained_service=1000.0)])
    >>> ledger.usage  # 800 halved, plus the 200 received since
    {'ann': 600.0}
    """

    def __init__(self, half_life: float = DEFAULT_HALF_LIFE) -> None:
        self.half_life = half_life
        self.usage: dict[str, float] = {}  # user -> decayed device-seconds at `at`
        self.at: float | None = None  # time of the last observed round
        self.jobs: dict[str, _Charged] = {}  # the jobs of the last observed round

    def observe(self, now: float, jobs: Sequence[JobView]) -> None:
        """Advance to `now`: decay, charge what each job received since the last round. Idempotent for one `now`."""
        dt = now - self.at if self.at is not None and now > self.at else 0.0
        usage = self.usage
        if dt > 0 and usage:
            decay = 2.0 ** (-dt / self.half_life)
            for user in usage:
                usage[user] *= decay
        before = self.jobs
        seen: dict[str, _Charged] = {}
        for job in jobs:
            entry = before.pop(job.id, None)
            if entry is None:
                entry = _Charged(job.user, 0.0, 0)
            if job.attained_service > entry.attained:
                usage[job.user] = usage.get(job.user, 0.0) + (job.attained_service - entry.attained)
                entry.attained = job.attained_service
            entry.devices = job.allocation.num_devices
            seen[job.id] = entry
        if dt > 0:
            for gone in before.values():  # not shown any more: it ended during the interval
                if gone.devices:
                    usage[gone.user] = usage.get(gone.user, 0.0) + gone.devices * dt
        self.jobs = seen
        self.at = now if self.at is None else max(self.at, now)

    def decided(self, decision: Decision) -> None:
        """Remember the devices each job holds until the next round (charged if it ends before then)."""
        for job_id, entry in self.jobs.items():
            entry.devices = decision.allocation(job_id).num_devices

    def factors(self, users: Iterable[str], tree: ShareTree) -> dict[str, float]:
        """User -> fair-share factor now."""
        return fairshare_factors(self.usage, users, tree)
