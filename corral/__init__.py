"""corral: schedule and run distributed training jobs."""
