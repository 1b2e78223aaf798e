"""The training service: the loop (`loop`), what a checkpoint records and so
what resume restores (`state`), the run folder's rules and its lock
(`run_folder`, `lock`), checkpoint folders (`checkpoints`), Ctrl-C and
SIGTERM (`signals`), and a run's best and final weights put to use
(`weights`: `load_run`)."""


def __getattr__(name: str):
    # `from optsvc.training import load_run` without loading the config
    # layer for every training submodule.
    if name in ("load_run", "LoadedRun"):
        from optsvc.training import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'optsvc.training' has no attribute {name!r}")
