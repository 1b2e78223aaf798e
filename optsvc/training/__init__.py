"""The training service: the loop (`loop`), what a checkpoint records and so
what resume restores (`state`), the run folder's rules and its lock
(`run_folder`, `lock`), checkpoint folders (`checkpoints`,
`checkpoint_format`) and progress output (`logger`)."""
