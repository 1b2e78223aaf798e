"""The training service: the loop (`loop`), the run folder and its lock
(`run_folder`, `lock`), checkpoints (`checkpoints`, `checkpoint_format`) and
progress output (`logger`)."""
