"""``prefetch(array, index)``: a hint, inside numba-compiled code, that ``array[index]``
will be read soon (LLVM's ``llvm.prefetch``: read, keep in all cache levels, data).

A priority flood reads its voxels in queue order, scattered over a block far larger than
the caches; asking for the next voxels' cache lines a few pops ahead lets their memory
latency overlap the work on the current one (kernels/watershed.py). A hint never changes
a result; an index outside the array is not read (the hardware drops it).
"""

from __future__ import annotations

from typing import Any

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch"]

# LLVM >= 17 has opaque pointers only ("ptr", intrinsic suffix p0); older typed IR: i8*.
_NAME = "llvm.prefetch.p0" if binding.llvm_version_info >= (17,) else "llvm.prefetch.p0i8"


def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    """Hint that ``array[index]`` (1-d, integer index) will be read soon."""
    if not (isinstance(array, types.Array) and array.ndim == 1
            and isinstance(index, types.Integer)):
        return None
    sig = types.void(array, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _NAME)
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])  # read, high locality, data
        return context.get_dummy_value()

    return sig, codegen


#: ``prefetch(array, index)`` in compiled code (typed Any: called only from numba).
prefetch: Any = intrinsic(_prefetch)
