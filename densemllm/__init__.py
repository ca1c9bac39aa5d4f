"""densemllm: standard multimodal LLMs (DenseMLLM / Youtu-VL) as dense predictors on the CPU."""
from . import _core
from ._core import CheckpointError
from .checkpoint import load
from .model import Model
from .parse import rle_decode, rle_encode
from .losses import ntpm_loss
from .crf import dense_crf
from . import train  # densemllm.train.TrainableModel

__version__ = "0.1.0"


def build_info():
    """Versions of oneDNN and OpenBLAS, the CPU ISA oneDNN uses, and the thread count."""
    return dict(_core.build_info())


def set_num_threads(n):
    """Use `n` threads for all heavy work (our loops, oneDNN, OpenBLAS); 0 = all cores."""
    _core.set_num_threads(int(n))


def get_num_threads():
    return _core.get_num_threads()


__all__ = ["build_info", "set_num_threads", "get_num_threads", "__version__"]
__all__ += ["rle_encode", "rle_decode"]
__all__ += ["ntpm_loss"]
__all__ += ["load", "Model", "CheckpointError"]
__all__ += ["dense_crf"]
