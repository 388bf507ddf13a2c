"""The paper's UNet and checkpoints live in :mod:`synthgen.segment.model`; training imports them from here."""
from synthgen.segment.model import (PAPER_CHANNELS, build_unet, load_checkpoint_model, n_params,  # noqa: F401
                                    save_model_checkpoint, total_stride)
