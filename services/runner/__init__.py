"""The local runner behind `batchmesh run`, `status` and `dlq`: it starts roles as processes, it is not one."""

from .run import dlq_list, dlq_replay, pipeline_status, run_pipeline

__all__ = ["dlq_list", "dlq_replay", "pipeline_status", "run_pipeline"]
