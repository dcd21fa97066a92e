"""Names that cross process boundaries: task queues, workflows, activities, signals, queries.

Every worker and client takes these from here, so a rename happens in one place.
"""

from typing import Final

DATA_QUEUE: Final = "data-queue"
"""Default task queue of the CPU data worker (snapshots)."""
GPU_QUEUE: Final = "gpu-queue"
"""Default task queue of the GPU worker's training slots (fine-tuning, batch scoring)."""
INFERENCE_QUEUE: Final = "inference-queue"
"""Default task queue of the GPU worker's inference slots: online requests, never behind training."""
ORCHESTRATOR_QUEUE: Final = "orchestrator-queue"
"""Default task queue of the orchestrator worker (workflows)."""

CLAIM_RUN: Final = "claim_run"
"""Activity: make a run id's folder this workflow chain's, or refuse an id that holds an earlier run."""
CREATE_DATASET_SNAPSHOT: Final = "create_dataset_snapshot"
"""Activity: freeze a dataset into a content-addressed snapshot."""
FINE_TUNE_BERT: Final = "fine_tune_bert"
"""Activity: checkpointed, resumable fine-tuning."""
RUN_BERT_INFERENCE: Final = "run_bert_inference"
"""Activity: batch inference with a warm model."""

TRAINING_WORKFLOW: Final = "CheckpointedBertTrainingWorkflow"
"""Workflow type: snapshot, then fine-tune with checkpoints."""
INFERENCE_WORKFLOW: Final = "BertInferenceWorkflow"
"""Workflow type: one inference activity."""

GET_LATEST_CHECKPOINT_QUERY: Final = "get_latest_checkpoint"
"""Query: the newest complete checkpoint the workflow knows (updated when an attempt ends)."""
GET_PROGRESS_QUERY: Final = "get_progress"
"""Query: stage, attempts, preemptions, failures and the last known step and checkpoint of a run.
Live step and loss come from the pending activity's heartbeat (see ``TrainingHeartbeat``)."""

QUEUES_MEMO_KEY: Final = "durabert_queues"
"""Workflow memo key holding ``{"data": ..., "gpu": ...}`` queue overrides for the activities."""

CREATE_SCORING_SNAPSHOT: Final = "create_scoring_snapshot"
"""Activity: freeze a dataset to score, unlabelled and in input order, every row kept."""
SCORE_DATASET: Final = "score_dataset"
"""Activity: score a scoring snapshot in chunks stored complete-or-not, resuming at the first missing one."""
BATCH_INFERENCE_WORKFLOW: Final = "BertBatchInferenceWorkflow"
"""Workflow type: snapshot a dataset to score, then score it with a finished run's model."""
EVALUATE_BERT: Final = "evaluate_bert"
"""Activity: score a labelled snapshot with a finished run's model and store the metrics report."""
EVALUATION_WORKFLOW: Final = "BertEvaluationWorkflow"
"""Workflow type: snapshot a labelled dataset, then evaluate a finished run's model on it."""

SWEEP_WORKFLOW: Final = "BertSweepWorkflow"
"""Workflow type: a hyperparameter sweep, each trial a child training workflow."""
RECORD_SWEEP: Final = "record_sweep"
"""Activity: write a sweep's ``trials.json`` and ``metric.png`` under ``sweeps/<sweep_id>/``."""
SWEEPS_DIR: Final = "sweeps"
"""Folder of sweep reports under the artifact root."""
