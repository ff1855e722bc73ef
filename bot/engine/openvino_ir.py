"""The OpenVINO IR as the openvino backend runs it: read (or exported in memory from a
transformers folder), made stateful if it is an older non-stateful export, and given a
`logits_to_keep` input so that a call computes logits only for the rows it reads.
"""

from __future__ import annotations

import ctypes
import logging
import math
import sys
from pathlib import Path
from typing import Any

from bot.engine.base import EngineError

log = logging.getLogger(__name__)

KEEP_INPUT = "logits_to_keep"
_COMPRESSED = ("u8", "i8", "u4", "i4", "nf4")  # weight types of an int8/int4 export


def keep_last_logits(model: Any) -> bool:
    """Add a `logits_to_keep` input that slices the hidden states before the LM head's MatMul,
    so a call computes logits only for the rows it reads. False where no LM head is found (the
    model then returns every row and the caller takes the last ones)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    if KEEP_INPUT in {n for i in model.inputs for n in i.get_names()}:
        return True
    logits = [r for r in model.get_results() if "logits" in r.input_value(0).get_names()]
    node = logits[0].input_value(0).get_node() if logits else None
    for _ in range(4):  # the head may end in a Convert, a scale or a soft cap
        if node is None or node.get_type_name() == "MatMul":
            break
        node = node.input_value(0).get_node()
    if node is None or node.get_type_name() != "MatMul":
        log.warning("no LM-head MatMul found before the logits: every row's logits are "
                    "computed")
        return False
    keep = ops.parameter([1], ov.Type.i64, name=KEEP_INPUT)
    keep.output(0).get_tensor().set_names({KEEP_INPUT})
    hidden = node.input_value(0)
    rows = ops.slice(hidden, ops.negative(keep),
                     ops.constant(np.array([np.iinfo(np.int64).max], dtype=np.int64)),
                     ops.constant(np.array([1], dtype=np.int64)),
                     ops.constant(np.array([1], dtype=np.int64)))
    node.input(0).replace_source_output(rows.output(0))
    model.add_parameters([keep])
    model.validate_nodes_and_infer_types()
    return True


def seq_axis(read_value: Any) -> int:
    """The state's sequence axis: where its initial shape is a static 0 ([?, heads, 0, dim])."""
    if read_value.get_input_size():
        for i, d in enumerate(read_value.get_input_partial_shape(0)):
            if d.is_static and d.get_length() == 0:
                return i
    return 2


def compressed(model: Any) -> bool:
    """Whether the weights are int8/int4 (large constants of a low-precision type)."""
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and \
                op.get_output_element_type(0).get_type_name() in _COMPRESSED:
            shape = op.get_output_shape(0)
            if math.prod(int(d) for d in shape) >= 4096:
                return True
    return False


def ensure_stateful(model: Any, path: str) -> None:
    """A non-stateful IR is converted to stateful (warning); one with no KV cache is refused."""
    if model.get_sinks():
        return
    names = {n for i in model.inputs for n in i.get_names()}
    if not any("past_key_values" in n for n in names):
        raise EngineError(f"the OpenVINO model in {path} has no KV cache (exported with "
                          "use_cache=False): re-export it with `chimein export --openvino`")
    log.warning("%s is a non-stateful OpenVINO export (KV cache as explicit inputs): it is "
                "converted to stateful at load, without the fused attention of a native "
                "stateful export; re-export it with `chimein export --openvino` for the fast "
                "path", path)
    from optimum.exporters.openvino.stateful import patch_stateful
    from transformers import AutoConfig

    patch_stateful(AutoConfig.from_pretrained(path, local_files_only=True), model)
    if not model.get_sinks():
        raise EngineError(f"could not convert the non-stateful OpenVINO model in {path} to "
                          "stateful: re-export it with `chimein export --openvino`")


def export_in_memory(path: str, local_only: bool) -> Any:
    try:
        from optimum.intel import OVModelForCausalLM
    except ImportError as e:
        raise EngineError("serving a transformers folder with the openvino backend needs "
                          "optimum-intel (pip install 'chimein[openvino]'), or export it once "
                          "with `chimein export --openvino`") from e
    log.info("exporting %s to a stateful OpenVINO IR in memory (use `chimein export "
             "--openvino` once to skip this at every start)", path)
    # optimum warns that it could not look a local folder up on the hub: expected here
    optimum_log = logging.getLogger("optimum")
    level = optimum_log.level
    if not log.isEnabledFor(logging.DEBUG):
        optimum_log.setLevel(logging.ERROR)
    try:
        ov = OVModelForCausalLM.from_pretrained(path, export=True, stateful=True, use_cache=True,
                                                compile=False, load_in_8bit=False,
                                                local_files_only=local_only)
    finally:
        optimum_log.setLevel(level)
    return ov.model


def release_file_pages(path: Path) -> int:
    """Drop this process's resident pages of read-only mappings of `path` (madvise
    MADV_DONTNEED); returns the bytes advised. Safe for a file mapping that is never written:
    a page read again comes back from the file. Linux only; elsewhere (or on any failure) a no-op.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        target = str(Path(path).resolve())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        freed = 0
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or parts[5].strip() != target or "w" in parts[1]:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(lo, hi - lo, 4) == 0:  # 4: MADV_DONTNEED
                    freed += hi - lo
        return freed
    except (OSError, AttributeError, ValueError) as e:
        log.debug("could not hand back the pages of %s: %s", path, e)
        return 0
