"""Config files: reading them (`parse`), the schema of every block (`schema`),
validation with dotted paths (`validation`), the registry (`registry`) and the
preview of schedules (`preview`)."""
