"""i2v-server's inference worker: diffusers' WanImageToVideoPipeline behind a line-JSON protocol.

Modules: `protocol` (messages and the main loop), `pipeline` (loading and running the model), `encode` (MP4 via
ffmpeg), `metadata` (what a checkpoint serves), `demo` (the tiny demo checkpoint). `python -m i2v_worker` runs it.
"""

__version__ = "0.1.0"
