"""The errors `deploy` raises: one tree, so the CLI maps them to messages in one place."""

from __future__ import annotations

from collections.abc import Sequence


class DeployError(Exception):
    """Base of every error of the `deploy` package."""


class TopologyError(DeployError):
    """A topology file is unreadable or invalid; `problems` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid topology:\n  - " + "\n  - ".join(self.problems))


class ClusterStateError(DeployError):
    """The cluster directory is missing, holds no cluster, or is in the wrong state."""


class EtcdctlMissing(DeployError):
    """The system `etcdctl` is not installed."""


class ClusterRunningError(ClusterStateError):
    """`up` was asked for a directory whose cluster still has live processes."""


class UnknownProcessError(DeployError):
    """A process or data-centre name that the cluster does not have."""


class StartError(DeployError):
    """A process could not be started, or did not become healthy before its deadline."""


class CeremonyError(DeployError):
    """Token initialisation or the key ceremony failed."""
