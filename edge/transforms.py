"""Every transform edge has, registered by importing its module (edge.parts.TRANSFORMS): the one line a
new transform adds outside its own module. save/load, the FLOP accounting and the export loop over them."""
import edge.acm  # noqa: F401
import edge.exits  # noqa: F401
import edge.head  # noqa: F401
import edge.moe  # noqa: F401
import edge.pruning  # noqa: F401
import edge.quant  # noqa: F401
import edge.skips  # noqa: F401

