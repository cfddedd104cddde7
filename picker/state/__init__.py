"""Pool membership, live endpoint signals, objectives/rewrites and the active config (L1).

Single writer (the event loop), immutable snapshots for readers. See :mod:`picker.state.datastore`.
"""
