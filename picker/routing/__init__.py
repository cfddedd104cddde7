"""Request routing (L2): the body parser, model rewrites, objectives, admission and scheduling, behind the
:class:`~picker.routing.types.Router` contract. See ``README.md`` here."""
