"""The `optsvc` command line (installed as the `optsvc_cli` package)."""
