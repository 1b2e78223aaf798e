"""`python -m optsvc_cli`: the `optsvc` command."""

from optsvc_cli import main

main()
