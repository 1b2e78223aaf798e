"""Adapters that put optsvc inside other training frameworks.

Each adapter is an optional extra, imported only where it is used: `import
optsvc` never loads one. `optsvc.integrations.thinc` (extras `thinc` and
`spacy`) gives Thinc's and spaCy's registries `optsvc.Adam.v1` and the other
optimizers and schedules, through entry points.
"""
