"""Offline converters from public corpora to kosmos record shards.

`python data/prepare.py FORMAT ...` runs the module `kosmos.data.convert.<FORMAT>` (with
'-' read as '_'). A format module defines `DESCRIPTION: str`,
`add_arguments(parser) -> None` and `main(args) -> int`; modules without them
(`common`, `runner`, `images`, `jpeg`, `lines`, `interleaved`, `parquet_io`,
`html_text`) are shared machinery.
"""
