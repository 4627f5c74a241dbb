"""The compose actuator of the autoscaler (`batchmesh autoscaler`): the manager decides (services.manager.autoscale),
this role starts and stops each work stage's `worker-<stage>` containers to match, through the docker SDK."""

from .compose import ComposeScaler, run_autoscaler

__all__ = ["ComposeScaler", "run_autoscaler"]
